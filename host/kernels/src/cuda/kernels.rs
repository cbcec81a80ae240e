//! The CUDA C kernels: their sources (real `.cu` files beside this one, embedded with
//! `include_str!`), run-time compilation with NVRTC (once per process and architecture), and the
//! loaded functions of one device.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use cudarc::driver::{CudaContext, CudaFunction};
use cudarc::nvrtc::{CompileOptions, Ptx, safe::CompileError};

use super::error::{OrDevice, device_error};
use crate::backend::{KernelError, Result};

/// One CUDA C source file and the kernels (`extern "C" __global__` functions) it defines.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    /// The file name under `src/cuda/`, also the program name NVRTC reports errors under.
    pub file: &'static str,
    /// The CUDA C text.
    pub source: &'static str,
    /// The kernels the backend loads from it.
    pub functions: &'static [&'static str],
}

/// Every kernel source the backend compiles, in load order.
pub const KERNEL_SOURCES: &[KernelSource] = &[
    KernelSource {
        file: "elementwise.cu",
        source: include_str!("elementwise.cu"),
        functions: &["bias_activation", "relu_backward", "axpy", "scale"],
    },
    KernelSource {
        file: "reduce.cu",
        source: include_str!("reduce.cu"),
        functions: &["bias_grad"],
    },
    KernelSource {
        file: "loss.cu",
        source: include_str!("loss.cu"),
        functions: &["softmax_cross_entropy", "mse", "loss_total"],
    },
    KernelSource {
        file: "adam.cu",
        source: include_str!("adam.cu"),
        functions: &["adam_step"],
    },
    KernelSource {
        file: "convert.cu",
        source: include_str!("convert.cu"),
        functions: &["f32_to_bf16"],
    },
];

/// The outcome of compiling one source with [`compile_kernels`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledSource {
    /// The source file.
    pub file: &'static str,
    /// Size of the PTX NVRTC produced, in bytes.
    pub ptx_bytes: usize,
    /// The kernels found in that PTX (all of [`KernelSource::functions`]).
    pub entries: Vec<&'static str>,
}

/// The version of the NVRTC library this process can load, or `None` when there is none
/// (`libnvrtc.so.13` not on the library path). Never panics.
pub fn nvrtc_version() -> Option<(i32, i32)> {
    // SAFETY: only tries to open the library; cudarc would panic on first use without it.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return None;
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library loads (checked above) and nvrtcVersion only writes the two ints.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    (status == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
}

/// Compiles every kernel source with NVRTC for its default architecture, without a GPU (NVRTC
/// alone is enough), and checks that each declares the kernels the backend will load. This is
/// what CI runs to catch a CUDA C error on machines without a device.
pub fn compile_kernels() -> Result<Vec<CompiledSource>> {
    KERNEL_SOURCES.iter().map(compile_checked).collect()
}

/// Compiles `s` and checks its PTX defines every kernel in [`KernelSource::functions`]: a
/// missing one would otherwise surface only when a device loads it.
fn compile_checked(s: &KernelSource) -> Result<CompiledSource> {
    let text = compile(s.file, s.source, None)?.to_src();
    let entries = s
        .functions
        .iter()
        .map(|f| {
            if text.contains(&format!(".entry {f}(")) {
                Ok(*f)
            } else {
                Err(device_error(
                    format!("compiling {}", s.file),
                    format!("the PTX defines no kernel `{f}`"),
                ))
            }
        })
        .collect::<Result<_>>()?;
    Ok(CompiledSource {
        file: s.file,
        ptx_bytes: text.len(),
        entries,
    })
}

/// Compiles one CUDA C program named `name` to PTX and returns the PTX's size in bytes; a
/// compile error carries NVRTC's log as its message. For checking sources outside
/// [`KERNEL_SOURCES`] (and that broken ones are refused).
pub fn compile_source(name: &str, source: &str) -> Result<usize> {
    Ok(compile(name, source, None)?.to_src().len())
}

/// Compiles `source` for `arch` (`compute_XY`, or NVRTC's default).
fn compile(name: &str, source: &str, arch: Option<&str>) -> Result<Ptx> {
    let context = || format!("compiling {name} with NVRTC");
    if nvrtc_version().is_none() {
        return Err(KernelError::Device {
            context: context(),
            message: "libnvrtc could not be loaded: put the folder holding libnvrtc.so.13 (CUDA \
                      13's NVRTC) on LD_LIBRARY_PATH"
                .into(),
        });
    }
    if source.contains('\0') || name.contains('\0') {
        // cudarc panics on interior NULs; refuse them here instead.
        return Err(KernelError::Unsupported(format!(
            "{name}: CUDA source and name must not contain NUL bytes"
        )));
    }
    let mut options = vec![
        // No multiply-add contraction: element-wise results then round exactly as the CPU
        // backend's do (bit-identical), at no measurable cost to these memory-bound kernels.
        // cuBLAS, which does the arithmetic that matters, is unaffected.
        "--fmad=false".to_string(),
    ];
    if let Some(arch) = arch {
        options.push(format!("--gpu-architecture={arch}"));
    }
    let opts = CompileOptions {
        name: Some(name.to_string()),
        options,
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(source, opts).map_err(|e| KernelError::Device {
        context: context(),
        message: match e {
            CompileError::CompileError { log, .. } => log.to_string_lossy().trim().to_string(),
            other => format!("{other:?}"),
        },
    })
}

/// PTX of every source, per target architecture: NVRTC runs once per process for each.
type PtxSet = Arc<Vec<Ptx>>;
static PTX: OnceLock<Mutex<HashMap<Option<String>, PtxSet>>> = OnceLock::new();

/// The PTX of [`KERNEL_SOURCES`] for a device of compute capability `cc`, compiled on first use.
fn ptx_for(cc: (i32, i32)) -> Result<PtxSet> {
    let cache = PTX.get_or_init(Default::default);
    // Held while compiling: a second thread wants the same PTX, so it may as well wait.
    let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
    let arch = format!("compute_{}{}", cc.0, cc.1);
    let key = Some(arch.clone());
    if let Some(set) = cache.get(&key) {
        return Ok(set.clone());
    }
    let set = match compile_all(Some(&arch)) {
        Ok(set) => set,
        // An NVRTC older than the device does not know its architecture; the driver JIT
        // compiles PTX of an older one forward, so fall back to NVRTC's default.
        Err(_) if !arch_known(&arch) => compile_all(None)?,
        Err(e) => return Err(e),
    };
    let set = Arc::new(set);
    cache.insert(key, set.clone());
    Ok(set)
}

fn compile_all(arch: Option<&str>) -> Result<Vec<Ptx>> {
    KERNEL_SOURCES
        .iter()
        .map(|s| compile(s.file, s.source, arch))
        .collect()
}

/// Whether this NVRTC accepts `--gpu-architecture=arch` (an empty program compiles).
fn arch_known(arch: &str) -> bool {
    let opts = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}")],
        ..Default::default()
    };
    match cudarc::nvrtc::compile_ptx_with_opts("", opts) {
        Ok(_) => true,
        Err(CompileError::CompileError { nvrtc, .. }) => {
            nvrtc.0 != cudarc::nvrtc::sys::nvrtcResult::NVRTC_ERROR_INVALID_OPTION
        }
        Err(_) => true,
    }
}

/// The backend's kernels, loaded into one device's context.
#[derive(Debug)]
pub(crate) struct Kernels {
    pub bias_activation: CudaFunction,
    pub relu_backward: CudaFunction,
    pub axpy: CudaFunction,
    pub scale: CudaFunction,
    pub bias_grad: CudaFunction,
    pub softmax_cross_entropy: CudaFunction,
    pub mse: CudaFunction,
    pub loss_total: CudaFunction,
    pub adam_step: CudaFunction,
    pub f32_to_bf16: CudaFunction,
}

impl Kernels {
    /// Compiles (or takes from the cache) and loads every kernel into `ctx`.
    pub fn load(ctx: &Arc<CudaContext>, cc: (i32, i32)) -> Result<Self> {
        let ptx = ptx_for(cc)?;
        let mut functions = HashMap::new();
        for (source, ptx) in KERNEL_SOURCES.iter().zip(ptx.iter()) {
            let module = ctx.load_module(ptx.clone()).or_device(|| {
                // The usual cause: an NVRTC newer than the driver writes PTX it cannot read.
                let (major, minor) = nvrtc_version().unwrap_or_default();
                format!(
                    "loading {} (PTX from NVRTC {major}.{minor}) into cuda:{}",
                    source.file,
                    ctx.ordinal()
                )
            })?;
            for &name in source.functions {
                let f = module
                    .load_function(name)
                    .or_device(|| format!("finding kernel {name} in {}", source.file))?;
                functions.insert(name, f);
            }
        }
        let mut take = |name: &str| {
            functions
                .remove(name)
                .ok_or_else(|| device_error(format!("finding kernel {name}"), "not declared"))
        };
        Ok(Self {
            bias_activation: take("bias_activation")?,
            relu_backward: take("relu_backward")?,
            axpy: take("axpy")?,
            scale: take("scale")?,
            bias_grad: take("bias_grad")?,
            softmax_cross_entropy: take("softmax_cross_entropy")?,
            mse: take("mse")?,
            loss_total: take("loss_total")?,
            adam_step: take("adam_step")?,
            f32_to_bf16: take("f32_to_bf16")?,
        })
    }
}

#[cfg(test)]
mod tests;
