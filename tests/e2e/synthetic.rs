//! Components built on the spot around the hostile fixture, for the shapes that a Rust guest
//! never has: many core instances (what componentize-py and componentize-js produce) and many
//! linear memories (a hostile plugin sizing each memory just under its cap).
//!
//! The hostile component is nested whole inside a new one that imports what it imports (its
//! leading type, import and alias sections are copied verbatim, so the import indices match),
//! instantiates it, re-exports its strategy and adds core instances of its own.

use wasm_encoder::{
    Alias, CodeSection, Component, ComponentAliasSection, ComponentExportKind,
    ComponentExportSection, ComponentInstanceSection, ComponentSectionId, Function,
    FunctionSection, InstanceSection, Instruction, MemArg, MemorySection, MemoryType, Module,
    ModuleSection, RawSection, StartSection, TypeSection,
};
use wasmparser::{ComponentTypeRef, Parser, Payload};

/// The export every scheduler plugin carries.
const STRATEGY: &str = "gantry:scheduler/strategy@0.1.0";

/// What [`wrap`] adds beside the nested component.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extra {
    /// Core instances that each define a linear memory of `pages_each` 64 KiB pages.
    pub memories: u32,
    /// Initial size of each of those memories.
    pub pages_each: u64,
    /// Write a byte to every page of each memory at instantiation (a start function), so the
    /// memory is resident, not only reserved.
    pub touch: bool,
    /// Core instances of an empty module.
    pub plain_instances: u32,
    /// Functions of a module instantiated once beside (code for the compiler to chew on).
    pub functions: u32,
    /// Arithmetic instructions in each of those functions.
    pub instructions_each: u32,
}

/// A component that behaves as `inner` (a scheduler plugin) with `extra` core instances beside.
pub fn wrap(inner: &[u8], extra: Extra) -> Vec<u8> {
    let mut component = Component::new();
    let mut imports: Vec<String> = Vec::new();
    for payload in Parser::new(0).parse_all(inner) {
        let (id, range) = match payload.expect("the inner component parses") {
            Payload::Version { .. } => continue,
            Payload::ComponentTypeSection(r) => (ComponentSectionId::Type, r.range()),
            Payload::ComponentAliasSection(r) => (ComponentSectionId::Alias, r.range()),
            Payload::ComponentImportSection(r) => {
                for import in r.clone() {
                    let import = import.unwrap();
                    assert!(matches!(import.ty, ComponentTypeRef::Instance(_)));
                    imports.push(import.name.0.to_string());
                }
                (ComponentSectionId::Import, r.range())
            }
            _ => break,
        };
        component.section(&RawSection {
            id: id as u8,
            data: &inner[range],
        });
    }
    component.section(&ModuleSection(&memory_module(
        extra.pages_each,
        extra.touch,
    )));
    component.section(&ModuleSection(&Module::new()));
    component.section(&ModuleSection(&code_module(
        extra.functions,
        extra.instructions_each,
    )));
    let mut core = InstanceSection::new();
    if extra.functions > 0 {
        core.instantiate(2, Vec::<(&str, wasm_encoder::ModuleArg)>::new());
    }
    for _ in 0..extra.memories {
        core.instantiate(0, Vec::<(&str, wasm_encoder::ModuleArg)>::new());
    }
    for _ in 0..extra.plain_instances {
        core.instantiate(1, Vec::<(&str, wasm_encoder::ModuleArg)>::new());
    }
    component.section(&core);
    component.section(&RawSection {
        id: ComponentSectionId::Component as u8,
        data: inner,
    });
    let imported = imports.len() as u32;
    let mut instances = ComponentInstanceSection::new();
    instances.instantiate(
        0,
        imports
            .iter()
            .enumerate()
            .map(|(i, name)| (name.as_str(), ComponentExportKind::Instance, i as u32)),
    );
    component.section(&instances);
    let mut aliases = ComponentAliasSection::new();
    aliases.alias(Alias::InstanceExport {
        instance: imported,
        kind: ComponentExportKind::Instance,
        name: STRATEGY,
    });
    component.section(&aliases);
    let mut exports = ComponentExportSection::new();
    exports.export(STRATEGY, ComponentExportKind::Instance, imported + 1, None);
    component.section(&exports);
    component.finish()
}

/// A core module of `functions` functions `(i32) -> i32`, each `instructions` additions and
/// multiplications long.
fn code_module(functions: u32, instructions: u32) -> Module {
    let mut module = Module::new();
    let mut types = TypeSection::new();
    types
        .ty()
        .function([wasm_encoder::ValType::I32], [wasm_encoder::ValType::I32]);
    module.section(&types);
    let mut decls = FunctionSection::new();
    for _ in 0..functions {
        decls.function(0);
    }
    module.section(&decls);
    let mut code = CodeSection::new();
    for f in 0..functions {
        let mut body = Function::new([]);
        body.instruction(&Instruction::LocalGet(0));
        for i in 0..instructions {
            body.instruction(&Instruction::I32Const((f ^ i) as i32 | 1));
            body.instruction(&if i % 2 == 0 {
                Instruction::I32Add
            } else {
                Instruction::I32Mul
            });
        }
        body.instruction(&Instruction::End);
        code.function(&body);
    }
    module.section(&code);
    module
}

/// A core module defining one memory of `pages` pages; with `touch`, a start function writes
/// one byte per OS page of it.
fn memory_module(pages: u64, touch: bool) -> Module {
    let mut module = Module::new();
    let mut types = TypeSection::new();
    types.ty().function([], []);
    module.section(&types);
    let mut functions = FunctionSection::new();
    if touch {
        functions.function(0);
    }
    module.section(&functions);
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: pages,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    module.section(&memories);
    if touch {
        module.section(&StartSection { function_index: 0 });
        let mut code = CodeSection::new();
        let mut f = Function::new([(1, wasm_encoder::ValType::I32)]);
        let end = (pages * 65536) as i32;
        let store = MemArg {
            offset: 0,
            align: 0,
            memory_index: 0,
        };
        for i in [
            Instruction::Block(wasm_encoder::BlockType::Empty),
            Instruction::Loop(wasm_encoder::BlockType::Empty),
            Instruction::LocalGet(0),
            Instruction::I32Const(1),
            Instruction::I32Store8(store),
            Instruction::LocalGet(0),
            Instruction::I32Const(4096),
            Instruction::I32Add,
            Instruction::LocalTee(0),
            Instruction::I32Const(end),
            Instruction::I32LtU,
            Instruction::BrIf(0),
            Instruction::End,
            Instruction::End,
            Instruction::End,
        ] {
            f.instruction(&i);
        }
        code.function(&f);
        module.section(&code);
    }
    module
}

#[test]
fn wrapped_components_validate() {
    let inner = std::fs::read(crate::support::HOSTILE_WASM).unwrap();
    let wasm = wrap(
        &inner,
        Extra {
            memories: 2,
            pages_each: 2,
            touch: true,
            plain_instances: 3,
            functions: 3,
            instructions_each: 10,
        },
    );
    let mut features = wasmparser::WasmFeatures::default();
    features.insert(wasmparser::WasmFeatures::COMPONENT_MODEL);
    wasmparser::Validator::new_with_features(features)
        .validate_all(&wasm)
        .unwrap();
}
