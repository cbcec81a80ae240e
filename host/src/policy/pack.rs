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

/// The rewrite: OPA's imports kept, one trapping function in place of each other import, in
/// import order. When every replaced import comes after the kept ones (as the linker lays the
/// engine out), the traps go first among the module's functions and every index stays what it
/// was, so the code is copied as it is; otherwise kept imports are renumbered first, the module's
/// functions next, the traps last, and every body is re-encoded with the new indices.
struct Finisher {
    /// The new index of each function, by its old index; `None` when every index stays.
    functions: Option<Vec<u32>>,
    /// The type of each trapping function, in order.
    stubs: Vec<u32>,
    /// The index of the first ABI version global.
    version_global: u32,
}

impl Finisher {
    fn new(layout: &Layout) -> Self {
        let imports = &layout.imported_functions;
        let stubs: Vec<u32> = imports
            .iter()
            .filter(|(_, keep)| !keep)
            .map(|(ty, _)| *ty)
            .collect();
        let kept = (imports.len() - stubs.len()) as u32;
        let in_place = imports.iter().skip(kept as usize).all(|(_, keep)| !keep);
        let functions = (!in_place).then(|| {
            let first_stub = kept + layout.defined_functions;
            let (mut next_kept, mut next_stub) = (0, first_stub);
            let mut functions = Vec::new();
            for (_, keep) in imports {
                let counter = if *keep {
                    &mut next_kept
                } else {
                    &mut next_stub
                };
                functions.push(*counter);
                *counter += 1;
            }
            functions.extend((0..layout.defined_functions).map(|d| kept + d));
            functions
        });
        Self {
            functions,
            stubs,
            version_global: layout.globals,
        }
    }

    fn stub_types(&self, functions: &mut FunctionSection) {
        for ty in &self.stubs {
            functions.function(*ty);
        }
    }

    fn stub_bodies(&self, code: &mut CodeSection) {
        for _ in &self.stubs {
            let mut trap = Function::new([]);
            trap.instruction(&Instruction::Unreachable);
            trap.instruction(&Instruction::End);
            code.function(&trap);
        }
    }
}

impl Reencode for Finisher {
    type Error = PackError;

    fn function_index(&mut self, func: u32) -> Result<u32, Reencoding<PackError>> {
        match &self.functions {
            None => Ok(func),
            Some(map) => map
                .get(func as usize)
                .copied()
                .ok_or_else(|| Reencoding::UserError(fail(format!("no function {func}")))),
        }
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
        // The traps go where `Finisher::new` numbered them: first when every index stays.
        let in_place = self.functions.is_none();
        if in_place {
            self.stub_types(functions);
        }
        utils::parse_function_section(self, functions, section)?;
        if !in_place {
            self.stub_types(functions);
        }
        Ok(())
    }

    fn parse_code_section(
        &mut self,
        code: &mut CodeSection,
        section: wasmparser::CodeSectionReader<'_>,
    ) -> Result<(), Reencoding<PackError>> {
        if self.functions.is_some() {
            utils::parse_code_section(self, code, section)?;
            self.stub_bodies(code);
            return Ok(());
        }
        // Every index stays: the bodies are copied (re-encoding 2.5 MB of code took 40 ms of
        // every process that builds a policy).
        self.stub_bodies(code);
        for body in section {
            code.raw(body?.as_bytes());
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

    /// A module like the engine built with regorus's `time`: OPA's imports and one of
    /// wasm-bindgen's (between them, or after them as the linker lays the engine out), functions
    /// calling both, and a wasm-bindgen export.
    fn bindgen_module(js_between: bool) -> Vec<u8> {
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
        let (js, opa) = if js_between { (1, 2) } else { (2, 1) };
        let js_import = EntityType::Function(0);
        if js_between {
            imports.import("__wbindgen_placeholder__", "__wbg_now", js_import);
        }
        imports.import("env", "opa_builtin0", EntityType::Function(0));
        if !js_between {
            imports.import("__wbindgen_placeholder__", "__wbg_now", js_import);
        }
        let mut functions = FunctionSection::new();
        let mut code = CodeSection::new();
        // Imports are functions 0-2; 3 calls the JavaScript import, 4 is 42, 5 calls 4, 6 calls
        // OPA's import.
        for body in [
            vec![Instruction::Call(js)],
            vec![Instruction::I32Const(42)],
            vec![Instruction::Call(4)],
            vec![Instruction::Call(opa)],
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
        for js_between in [true, false] {
            finished_module_links_and_calls(js_between);
        }
    }

    fn finished_module_links_and_calls(js_between: bool) {
        let finished = finish(&bindgen_module(js_between)).unwrap();
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

    /// The engine as built keeps every function index, so finishing it copies its code instead
    /// of re-encoding it (40 ms of every `policy build` in a release build, now about 5).
    #[test]
    fn the_engine_module_is_finished_without_renumbering_its_functions() {
        let layout = Layout::read(crate::policy::ENGINE_WASM).unwrap();
        let finisher = Finisher::new(&layout);
        assert!(finisher.functions.is_none());
        assert!(
            !finisher.stubs.is_empty(),
            "the engine imports no JavaScript any more?"
        );
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
