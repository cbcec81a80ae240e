//! Finishes the policy engine module for OPA's Wasm ABI, once per process: it adds the ABI
//! version globals that Rust cannot define. Nothing of a policy goes into the module (the policy
//! travels in the bundle's data), so every bundle carries the same bytes and a host compiles them
//! once.

use std::ops::Range;

use wasm_encoder::{
    ConstExpr, ExportKind, ExportSection, GlobalSection, GlobalType, Module, RawSection, ValType,
};
use wasmparser::{
    ExportSectionReader, ExternalKind, FromReader, GlobalSectionReader, Parser, Payload,
    SectionLimited, TypeRef,
};

/// OPA Wasm ABI version the engine implements (1.2: with the `opa_eval` fast path).
pub const ABI_VERSION: (i32, i32) = (1, 2);

/// Why the module could not be finished: not the policy engine, or malformed.
#[derive(Debug, thiserror::Error)]
#[error("finishing the policy engine module: {0}")]
pub struct PackError(String);

fn fail(message: impl Into<String>) -> PackError {
    PackError(message.into())
}

fn parse_err(e: wasmparser::BinaryReaderError) -> PackError {
    fail(e.to_string())
}

/// What the finisher reads from the engine before rewriting it.
struct Layout {
    imported_globals: u32,
    /// Globals the module defines.
    global_count: u32,
    /// Whether the module imports `env.memory`, as the ABI requires.
    imports_memory: bool,
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

/// Returns the engine module with the ABI version globals added and exported.
pub fn finish(engine: &[u8]) -> Result<Vec<u8>, PackError> {
    let layout = Layout::read(engine)?;
    if !layout.imports_memory {
        return Err(fail(
            "the module does not import `env.memory`: not built for OPA's ABI",
        ));
    }
    let mut module = Module::new();
    let mut saw = (false, false);
    for payload in Parser::new(0).parse_all(engine) {
        match payload.map_err(parse_err)? {
            Payload::GlobalSection(reader) => {
                module.section(&globals(engine, reader)?);
                saw.0 = true;
            }
            Payload::ExportSection(reader) => {
                module.section(&exports(reader, &layout)?);
                saw.1 = true;
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
    if saw != (true, true) {
        return Err(fail(
            "the module lacks a global or an export section: not the policy engine",
        ));
    }
    Ok(module.finish())
}

impl Layout {
    /// The first pass: imports, globals, exports.
    fn read(engine: &[u8]) -> Result<Layout, PackError> {
        let mut layout = Layout {
            imported_globals: 0,
            global_count: 0,
            imports_memory: false,
        };
        for payload in Parser::new(0).parse_all(engine) {
            match payload.map_err(parse_err)? {
                Payload::ImportSection(reader) => {
                    for import in reader {
                        let import = import.map_err(parse_err)?;
                        match import.ty {
                            TypeRef::Global(_) => layout.imported_globals += 1,
                            TypeRef::Memory(_) => {
                                layout.imports_memory |=
                                    import.module == "env" && import.name == "memory";
                            }
                            _ => {}
                        }
                    }
                }
                Payload::GlobalSection(reader) => layout.global_count = reader.count(),
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
