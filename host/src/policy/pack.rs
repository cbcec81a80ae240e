//! Writes a policy into a copy of the policy engine module, which then follows OPA's Wasm ABI on
//! its own: no recompilation per policy, milliseconds per build.
//!
//! The engine exports the address of its `GANTRY_POLICY` cell and its `__heap_base`. The packer
//! places the policy's JSON at the old heap base, points the cell at it (both as active data
//! segments, applied at instantiation), moves the heap start past it, raises the imported
//! memory's minimum to cover it, and adds the ABI version globals that Rust cannot define.

use std::ops::Range;

use wasm_encoder::{
    ConstExpr, DataCountSection, DataSection, EntityType, ExportKind, ExportSection, GlobalSection,
    GlobalType, ImportSection, MemoryType, Module, RawSection, ValType,
};
use wasmparser::{
    DataSectionReader, ExportSectionReader, ExternalKind, FromReader, GlobalSectionReader,
    ImportSectionReader, Operator, Parser, Payload, SectionLimited, TypeRef,
};

/// OPA Wasm ABI version the engine implements (1.2: with the `opa_eval` fast path).
pub const ABI_VERSION: (i32, i32) = (1, 2);

const PAGE: u64 = 65536;

/// Why a module could not be packed: not the policy engine, or malformed.
#[derive(Debug, thiserror::Error)]
#[error("packing the policy engine module: {0}")]
pub struct PackError(String);

fn fail(message: impl Into<String>) -> PackError {
    PackError(message.into())
}

fn parse_err(e: wasmparser::BinaryReaderError) -> PackError {
    fail(e.to_string())
}

/// Everything the packer reads from the engine before rewriting it.
struct Layout {
    imported_globals: u32,
    /// Globals the module defines.
    global_count: u32,
    /// Value of each defined global that is an `i32.const`, by global index.
    const_globals: Vec<(u32, i32)>,
    exports: Vec<(String, ExternalKind, u32)>,
}

impl Layout {
    fn exported_const(&self, name: &str) -> Result<u32, PackError> {
        let index = self
            .exports
            .iter()
            .find(|(n, kind, _)| n == name && *kind == ExternalKind::Global)
            .map(|&(_, _, i)| i)
            .ok_or_else(|| fail(format!("the module exports no global `{name}`")))?;
        self.const_globals
            .iter()
            .find(|&&(i, _)| i == index)
            .map(|&(_, v)| v as u32)
            .ok_or_else(|| fail(format!("global `{name}` is not an i32 constant")))
    }
}

fn section_bytes(wasm: &[u8], range: Range<usize>) -> &[u8] {
    &wasm[range]
}

/// The encoded bytes of each item of a section, to copy items unchanged.
fn raw_items<'a, T: FromReader<'a>>(
    wasm: &'a [u8],
    reader: SectionLimited<'a, T>,
) -> Result<Vec<&'a [u8]>, PackError> {
    let end = reader.range().end;
    let offsets: Vec<usize> = reader
        .into_iter_with_offsets()
        .map(|item| item.map(|(offset, _)| offset))
        .collect::<Result<_, _>>()
        .map_err(parse_err)?;
    Ok(offsets
        .iter()
        .enumerate()
        .map(|(i, &start)| &wasm[start..offsets.get(i + 1).copied().unwrap_or(end)])
        .collect())
}

/// The imports, with the memory's minimum raised to `min_pages`.
fn imports(reader: ImportSectionReader<'_>, min_pages: u64) -> Result<ImportSection, PackError> {
    let mut section = ImportSection::new();
    let mut memory = false;
    for import in reader {
        let import = import.map_err(parse_err)?;
        let ty = match import.ty {
            TypeRef::Func(index) => EntityType::Function(index),
            TypeRef::Memory(m) if import.module == "env" && import.name == "memory" => {
                memory = true;
                if m.maximum.is_some_and(|max| max < min_pages) {
                    return Err(fail(format!(
                        "the policy needs {min_pages} pages of memory, over the module's maximum"
                    )));
                }
                EntityType::Memory(MemoryType {
                    minimum: m.initial.max(min_pages),
                    maximum: m.maximum,
                    memory64: m.memory64,
                    shared: m.shared,
                    page_size_log2: m.page_size_log2,
                })
            }
            other => {
                return Err(fail(format!(
                    "unexpected import {}.{} ({other:?}): not the policy engine",
                    import.module, import.name
                )));
            }
        };
        section.import(import.module, import.name, ty);
    }
    if !memory {
        return Err(fail(
            "the module does not import `env.memory`: not built for OPA's ABI",
        ));
    }
    Ok(section)
}

/// The exports, plus the ABI version globals (the last two globals of the new global section).
fn exports(reader: ExportSectionReader<'_>, layout: &Layout) -> Result<ExportSection, PackError> {
    let mut section = ExportSection::new();
    for export in reader {
        let e = export.map_err(parse_err)?;
        let kind = match e.kind {
            ExternalKind::Func => ExportKind::Func,
            ExternalKind::Table => ExportKind::Table,
            ExternalKind::Memory => ExportKind::Memory,
            ExternalKind::Global => ExportKind::Global,
            ExternalKind::Tag => ExportKind::Tag,
        };
        section.export(e.name, kind, e.index);
    }
    let defined = layout.global_count;
    let first = layout.imported_globals + defined;
    section.export("opa_wasm_abi_version", ExportKind::Global, first);
    section.export("opa_wasm_abi_minor_version", ExportKind::Global, first + 1);
    Ok(section)
}

/// The data segments, plus the policy and the cell that points at it.
fn data(
    wasm: &[u8],
    reader: DataSectionReader<'_>,
    cell: u32,
    blob_at: u32,
    len: u32,
    heap_start: u32,
    policy_json: &[u8],
) -> Result<DataSection, PackError> {
    let mut section = DataSection::new();
    for raw in raw_items(wasm, reader)? {
        section.raw(raw);
    }
    section.active(
        0,
        &ConstExpr::i32_const(blob_at as i32),
        policy_json.iter().copied(),
    );
    let cell_value: Vec<u8> = [blob_at, len, heap_start]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    section.active(0, &ConstExpr::i32_const(cell as i32), cell_value);
    Ok(section)
}

/// Returns the engine module with `policy_json` packed in.
pub fn pack(engine: &[u8], policy_json: &[u8]) -> Result<Vec<u8>, PackError> {
    let layout = Layout::read(engine)?;
    let cell = layout.exported_const("GANTRY_POLICY")?;
    let heap_base = layout.exported_const("__heap_base")?;
    let blob_at = heap_base.next_multiple_of(16);
    let len = u32::try_from(policy_json.len()).map_err(|_| fail("policy too large"))?;
    let heap_start = blob_at
        .checked_add(len)
        .and_then(|end| end.checked_next_multiple_of(16))
        .ok_or_else(|| fail("policy too large for a 32-bit memory"))?;
    let min_pages = (u64::from(heap_start)).div_ceil(PAGE) + 1;

    // Second pass: copy every section, rewriting the five the packer changes.
    let mut module = Module::new();
    let mut saw = (false, false, false);
    for payload in Parser::new(0).parse_all(engine) {
        let payload = payload.map_err(parse_err)?;
        match payload {
            Payload::ImportSection(reader) => {
                module.section(&imports(reader, min_pages)?);
            }
            Payload::GlobalSection(reader) => {
                module.section(&globals(engine, reader)?);
                saw.0 = true;
            }
            Payload::ExportSection(reader) => {
                module.section(&exports(reader, &layout)?);
                saw.1 = true;
            }
            Payload::DataCountSection { count, .. } => {
                module.section(&DataCountSection { count: count + 2 });
            }
            Payload::DataSection(reader) => {
                let section = data(engine, reader, cell, blob_at, len, heap_start, policy_json)?;
                module.section(&section);
                saw.2 = true;
            }
            other => {
                if let Some((id, range)) = other.as_section() {
                    module.section(&RawSection {
                        id,
                        data: section_bytes(engine, range),
                    });
                }
            }
        }
    }
    if saw != (true, true, true) {
        return Err(fail(
            "the module lacks a global, export or data section: not the policy engine",
        ));
    }
    let packed = module.finish();
    wasmparser::Validator::new()
        .validate_all(&packed)
        .map_err(|e| fail(format!("the packed module does not validate: {e}")))?;
    Ok(packed)
}

impl Layout {
    /// The first pass: imports, globals, exports.
    fn read(engine: &[u8]) -> Result<Layout, PackError> {
        let mut layout = Layout {
            imported_globals: 0,
            global_count: 0,
            const_globals: Vec::new(),
            exports: Vec::new(),
        };
        for payload in Parser::new(0).parse_all(engine) {
            match payload.map_err(parse_err)? {
                Payload::ImportSection(reader) => {
                    for import in reader {
                        if let TypeRef::Global(_) = import.map_err(parse_err)?.ty {
                            layout.imported_globals += 1;
                        }
                    }
                }
                Payload::GlobalSection(reader) => {
                    layout.global_count = reader.count();
                    for (i, global) in reader.into_iter().enumerate() {
                        let global = global.map_err(parse_err)?;
                        let mut ops = global.init_expr.get_operators_reader();
                        if let Ok(Operator::I32Const { value }) = ops.read() {
                            layout
                                .const_globals
                                .push((layout.imported_globals + i as u32, value));
                        }
                    }
                }
                Payload::ExportSection(reader) => {
                    for export in reader {
                        let e = export.map_err(parse_err)?;
                        layout.exports.push((e.name.to_string(), e.kind, e.index));
                    }
                }
                _ => {}
            }
        }
        Ok(layout)
    }
}

/// The engine's globals, then the two constant globals of the ABI version.
fn globals<'a>(
    engine: &'a [u8],
    reader: GlobalSectionReader<'a>,
) -> Result<GlobalSection, PackError> {
    let mut section = GlobalSection::new();
    for raw in raw_items(engine, reader)? {
        section.raw(raw);
    }
    for value in [ABI_VERSION.0, ABI_VERSION.1] {
        section.global(
            GlobalType {
                val_type: ValType::I32,
                mutable: false,
                shared: false,
            },
            &ConstExpr::i32_const(value),
        );
    }
    Ok(section)
}
