//! Finishes the policy engine module for OPA's Wasm ABI, once per process: it adds the ABI
//! version globals that Rust cannot define, and leaves the module importing nothing but OPA's
//! `env`. Nothing of a policy goes into the module (the policy travels in the bundle's data), so
//! every bundle carries the same bytes and a host compiles them once.
//!
//! Why imports are rewritten: regorus's `time.*` builtins use chrono, whose default features
//! (which regorus asks for, and Cargo cannot turn off) bind JavaScript's `Date` on
//! `wasm32-unknown-unknown` through wasm-bindgen. Its imports (`__wbindgen_placeholder__.*`, read
//! the clock, the local time zone) are what no OPA host provides, and their code is only reached
//! by the clock (`time.now_ns`, which the host provides instead) and by the local time zone,
//! which a sandbox does not have. Each such import becomes a function of the module that traps,
//! so a decision that reaches one fails, and so denies; wasm-bindgen's own exports are dropped.

use wasm_encoder::reencode::{Error as Reencoding, Reencode, utils};
use wasm_encoder::{
    CodeSection, ConstExpr, ExportKind, ExportSection, Function, FunctionSection, GlobalSection,
    GlobalType, ImportSection, Instruction, Module, ValType,
};
use wasmparser::{Parser, Payload, TypeRef};

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

/// The module OPA's hosts link: only its imports are provided.
const HOST_MODULE: &str = "env";

/// An export of wasm-bindgen's (for its command-line tool, which this module never meets).
fn is_bindgen(name: &str) -> bool {
    ["__wbindgen", "__wbg", "__externref"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// What the finisher reads from the engine before rewriting it.
struct Layout {
    /// Globals the module imports and defines: the ABI's two come after them.
    globals: u32,
    /// Whether the module imports `env.memory`, as the ABI requires.
    imports_memory: bool,
    /// Each imported function's type, and whether it stays an import (it is OPA's).
    imported_functions: Vec<(u32, bool)>,
    /// Functions the module defines.
    defined_functions: u32,
    saw_globals_and_exports: (bool, bool),
}

impl Layout {
    /// The first pass: imports, functions, globals, exports.
    fn read(engine: &[u8]) -> Result<Layout, PackError> {
        let mut layout = Layout {
            globals: 0,
            imports_memory: false,
            imported_functions: Vec::new(),
            defined_functions: 0,
            saw_globals_and_exports: (false, false),
        };
        for payload in Parser::new(0).parse_all(engine) {
            match payload.map_err(parse_err)? {
                Payload::ImportSection(reader) => {
                    for import in reader {
                        let import = import.map_err(parse_err)?;
                        let ours = import.module == HOST_MODULE;
                        match import.ty {
                            TypeRef::Global(_) if ours => layout.globals += 1,
                            TypeRef::Memory(_) if ours => {
                                layout.imports_memory |= import.name == "memory";
                            }
                            TypeRef::Func(ty) => layout.imported_functions.push((ty, ours)),
                            _ if ours => {}
                            _ => {
                                return Err(fail(format!(
                                    "the module imports `{}.{}`, which is not a function: no OPA \
                                     host provides it and it cannot be replaced",
                                    import.module, import.name
                                )));
                            }
                        }
                    }
                }
                Payload::FunctionSection(reader) => layout.defined_functions = reader.count(),
                Payload::GlobalSection(reader) => {
                    layout.globals += reader.count();
                    layout.saw_globals_and_exports.0 = true;
                }
                Payload::ExportSection(_) => layout.saw_globals_and_exports.1 = true,
                _ => {}
            }
        }
        Ok(layout)
    }
}

/// The rewrite: OPA's imports kept (renumbered first), the module's functions next, then one
/// trapping function in place of each other import, in import order.
struct Finisher {
    /// The new index of each function, by its old index.
    functions: Vec<u32>,
    /// The type of each trapping function, in order.
    stubs: Vec<u32>,
    /// The index of the first ABI version global.
    version_global: u32,
}

impl Finisher {
    fn new(layout: &Layout) -> Self {
        let kept = layout.imported_functions.iter().filter(|(_, k)| *k).count() as u32;
        let first_stub = kept + layout.defined_functions;
        let mut functions = Vec::new();
        let mut stubs = Vec::new();
        let mut next_kept = 0;
        for (ty, keep) in &layout.imported_functions {
            if *keep {
                functions.push(next_kept);
                next_kept += 1;
            } else {
                functions.push(first_stub + stubs.len() as u32);
                stubs.push(*ty);
            }
        }
        functions.extend((0..layout.defined_functions).map(|d| kept + d));
        Self {
            functions,
            stubs,
            version_global: layout.globals,
        }
    }
}

impl Reencode for Finisher {
    type Error = PackError;

    fn function_index(&mut self, func: u32) -> Result<u32, Reencoding<PackError>> {
        self.functions
            .get(func as usize)
            .copied()
            .ok_or_else(|| Reencoding::UserError(fail(format!("no function {func}"))))
    }

    fn parse_import(
        &mut self,
        imports: &mut ImportSection,
        import: wasmparser::Import<'_>,
    ) -> Result<(), Reencoding<PackError>> {
        if import.module != HOST_MODULE {
            tracing::debug!(
                module = import.module,
                name = import.name,
                "import replaced by a trap"
            );
            return Ok(());
        }
        utils::parse_import(self, imports, import)
    }

    fn parse_function_section(
        &mut self,
        functions: &mut FunctionSection,
        section: wasmparser::FunctionSectionReader<'_>,
    ) -> Result<(), Reencoding<PackError>> {
        utils::parse_function_section(self, functions, section)?;
        for ty in &self.stubs {
            functions.function(*ty);
        }
        Ok(())
    }

    fn parse_code_section(
        &mut self,
        code: &mut CodeSection,
        section: wasmparser::CodeSectionReader<'_>,
    ) -> Result<(), Reencoding<PackError>> {
        utils::parse_code_section(self, code, section)?;
        for _ in &self.stubs {
            let mut trap = Function::new([]);
            trap.instruction(&Instruction::Unreachable);
            trap.instruction(&Instruction::End);
            code.function(&trap);
        }
        Ok(())
    }

    /// The engine's globals, then the two constant globals of the ABI version.
    fn parse_global_section(
        &mut self,
        globals: &mut GlobalSection,
        section: wasmparser::GlobalSectionReader<'_>,
    ) -> Result<(), Reencoding<PackError>> {
        utils::parse_global_section(self, globals, section)?;
        for value in [ABI_VERSION.0, ABI_VERSION.1] {
            globals.global(
                GlobalType {
                    val_type: ValType::I32,
                    mutable: false,
                    shared: false,
                },
                &ConstExpr::i32_const(value),
            );
        }
        Ok(())
    }

    /// The exports but wasm-bindgen's, plus the ABI version globals.
    fn parse_export_section(
        &mut self,
        exports: &mut ExportSection,
        section: wasmparser::ExportSectionReader<'_>,
    ) -> Result<(), Reencoding<PackError>> {
        for export in section {
            let export = export?;
            if !is_bindgen(export.name) {
                utils::parse_export(self, exports, export)?;
            }
        }
        let first = self.version_global;
        exports.export("opa_wasm_abi_version", ExportKind::Global, first);
        exports.export("opa_wasm_abi_minor_version", ExportKind::Global, first + 1);
        Ok(())
    }
}

/// Returns the engine module importing only OPA's `env`, with the ABI version globals added and
/// exported.
pub fn finish(engine: &[u8]) -> Result<Vec<u8>, PackError> {
    let layout = Layout::read(engine)?;
    if !layout.imports_memory {
        return Err(fail(
            "the module does not import `env.memory`: not built for OPA's ABI",
        ));
    }
    if layout.saw_globals_and_exports != (true, true) {
        return Err(fail(
            "the module lacks a global or an export section: not the policy engine",
        ));
    }
    let mut module = Module::new();
    Finisher::new(&layout)
        .parse_core_module(&mut module, Parser::new(0), engine)
        .map_err(|e| match e {
            Reencoding::UserError(e) => e,
            other => fail(other.to_string()),
        })?;
    Ok(module.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_encoder::{EntityType, ExportSection, MemoryType, TypeSection};

    /// A module like the engine built with regorus's `time`: OPA's imports, one of wasm-bindgen's
    /// between them, functions calling both, and a wasm-bindgen export.
    fn bindgen_module() -> Vec<u8> {
        let mut types = TypeSection::new();
        types.ty().function([], [ValType::I32]);
        types.ty().function([ValType::I32], []);
        let mut imports = ImportSection::new();
        let memory = MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        };
        imports.import("env", "memory", EntityType::Memory(memory));
        imports.import("env", "opa_abort", EntityType::Function(1));
        imports.import(
            "__wbindgen_placeholder__",
            "__wbg_now",
            EntityType::Function(0),
        );
        imports.import("env", "opa_builtin0", EntityType::Function(0));
        let mut functions = FunctionSection::new();
        let mut code = CodeSection::new();
        // Imports are functions 0-2; 3 calls the JavaScript import (1), 4 is 42, 5 calls 4, 6
        // calls OPA's import (2).
        for body in [
            vec![Instruction::Call(1)],
            vec![Instruction::I32Const(42)],
            vec![Instruction::Call(4)],
            vec![Instruction::Call(2)],
        ] {
            functions.function(0);
            let mut f = Function::new([]);
            for i in &body {
                f.instruction(i);
            }
            f.instruction(&Instruction::End);
            code.function(&f);
        }
        let mut globals = GlobalSection::new();
        globals.global(
            GlobalType {
                val_type: ValType::I32,
                mutable: true,
                shared: false,
            },
            &ConstExpr::i32_const(7),
        );
        let mut exports = ExportSection::new();
        for (name, index) in [
            ("calls_js", 3),
            ("answer", 4),
            ("calls_answer", 5),
            ("calls_opa", 6),
            ("__wbindgen_describe_now", 4),
        ] {
            exports.export(name, ExportKind::Func, index);
        }
        let mut module = Module::new();
        module
            .section(&types)
            .section(&imports)
            .section(&functions)
            .section(&globals)
            .section(&exports)
            .section(&code);
        module.finish()
    }

    /// Before, the module kept wasm-bindgen's imports and no OPA host could link it (opa-wasm:
    /// unknown import); now they are functions that trap, every call still reaches the function
    /// it called, and the ABI's globals are there.
    #[test]
    fn imports_no_opa_host_provides_become_traps_and_calls_keep_their_targets() {
        let finished = finish(&bindgen_module()).unwrap();
        wasmparser::Validator::new()
            .validate_all(&finished)
            .unwrap();
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(&engine, &finished).unwrap();
        let imports: Vec<String> = module
            .imports()
            .map(|i| format!("{}.{}", i.module(), i.name()))
            .collect();
        assert_eq!(imports, ["env.memory", "env.opa_abort", "env.opa_builtin0"]);
        assert!(module.exports().all(|e| !is_bindgen(e.name())));
        let mut store = wasmtime::Store::new(&engine, ());
        let mut linker = wasmtime::Linker::new(&engine);
        let memory = wasmtime::Memory::new(&mut store, wasmtime::MemoryType::new(1, None)).unwrap();
        linker.define(&store, "env", "memory", memory).unwrap();
        linker
            .func_wrap("env", "opa_abort", |_: i32| {})
            .unwrap()
            .func_wrap("env", "opa_builtin0", || 9)
            .unwrap();
        let instance = linker.instantiate(&mut store, &module).unwrap();
        let mut call = |name: &str| {
            instance
                .get_typed_func::<(), i32>(&mut store, name)
                .unwrap()
                .call(&mut store, ())
        };
        assert_eq!(call("answer").unwrap(), 42);
        assert_eq!(call("calls_answer").unwrap(), 42);
        assert_eq!(call("calls_opa").unwrap(), 9);
        let trap = call("calls_js").unwrap_err();
        assert_eq!(
            trap.downcast_ref::<wasmtime::Trap>(),
            Some(&wasmtime::Trap::UnreachableCodeReached)
        );
        let mut version = |name: &str| {
            instance
                .get_global(&mut store, name)
                .unwrap()
                .get(&mut store)
                .i32()
        };
        assert_eq!(version("opa_wasm_abi_version"), Some(ABI_VERSION.0));
        assert_eq!(version("opa_wasm_abi_minor_version"), Some(ABI_VERSION.1));
    }

    #[test]
    fn an_import_that_is_not_a_function_is_refused() {
        let mut imports = ImportSection::new();
        imports.import(
            "__wbindgen_placeholder__",
            "table",
            EntityType::Global(GlobalType {
                val_type: ValType::I32,
                mutable: false,
                shared: false,
            }),
        );
        let mut module = Module::new();
        module.section(&imports);
        let e = finish(&module.finish()).unwrap_err().to_string();
        assert!(e.contains("__wbindgen_placeholder__.table"), "{e}");
    }
}
