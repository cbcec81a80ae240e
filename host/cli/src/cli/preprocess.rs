//! `gantry preprocess`: a dataset through a preprocessing plugin into the binary f32 format.

use std::path::PathBuf;

use anyhow::Context as _;
use gantry::bindings::pre_v0_1::Tensor;
use gantry::pipeline::{self, PipelineConfig, PipelineError, PipelineStats};
use gantry::plugin::{ArtifactCache, base_linker};
use gantry::preprocess::PreprocessPlugin;
use gantry::storage::Store;
use gantry::training::data::F32Writer;

/// Arguments of `gantry preprocess`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A shipped preprocessing plugin.
    #[arg(long, default_value = "standardize")]
    plugin: String,
    /// A CSV file (records, one per line, no header).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "object",
        required_unless_present = "object"
    )]
    file: Option<PathBuf>,
    /// An object of the data directory's encrypted store, decrypted as it streams.
    #[arg(long, value_name = "ID")]
    object: Option<String>,
    #[command(flatten)]
    dir: super::store::DataDir,
    /// Output: features in the binary f32 format (`.f32`).
    #[arg(short, long, value_name = "FILE.f32")]
    out: PathBuf,
    /// Records per batch.
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// Workers (plugin instances) in parallel (default: every core).
    #[arg(long)]
    workers: Option<usize>,
    /// Batches each channel holds at most (memory stays bounded by this, not the dataset).
    #[arg(long, default_value_t = 2)]
    depth: usize,
    /// Override a `[config]` entry of the plugin (`key=value`, repeatable), e.g.
    /// `--set categories='1=red|green'` for `onehot`, `--set length=128` for `tokenizer`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the run's figures as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `gantry preprocess`.
pub fn run(ctx: &super::Context, args: Args) -> anyhow::Result<()> {
    let mut plugin = load_builtin(ctx, &args.plugin)?;
    for entry in &args.set {
        let (key, value) = entry
            .split_once('=')
            .with_context(|| format!("--set `{entry}`: expected KEY=VALUE"))?;
        plugin.set_config(key.trim(), value);
    }
    let mut config = PipelineConfig {
        batch_records: args.batch.max(1),
        depth: args.depth.max(1),
        ..PipelineConfig::default()
    };
    if let Some(w) = args.workers {
        config.workers = w.max(1);
    }
    let mut out = Output {
        path: args.out.clone(),
        writer: None,
        columns: 0,
    };
    let started = std::time::Instant::now();
    let stats = match stream(&args, &plugin, config, &mut |t| out.push(t))? {
        Ok(s) => s,
        Err(e) => {
            if let Some(w) = out.writer {
                w.discard();
            }
            return Err(e).context(format!("preprocessing with `{}`", args.plugin));
        }
    };
    let rows = match out.writer {
        Some(w) => w.finish()?,
        None => anyhow::bail!("the dataset has no records"),
    };
    let secs = started.elapsed().as_secs_f64();
    let columns = out.columns;
    if args.json {
        let mut v = serde_json::to_value(&stats)?;
        v["seconds"] = secs.into();
        v["mb_s"] = (stats.bytes as f64 / 1e6 / secs).into();
        v["columns"] = columns.into();
        println!("{v}");
    } else {
        println!(
            "{rows} rows x {columns} features -> {} ({} batches, {}, {:.0} MB/s, at most {} batches in flight)",
            args.out.display(),
            stats.batches,
            if stats.two_passes {
                "two passes"
            } else {
                "one pass"
            },
            stats.bytes as f64 / 1e6 / secs * if stats.two_passes { 2.0 } else { 1.0 },
            stats.max_in_flight
        );
    }
    Ok(())
}

/// A shipped preprocessing plugin on an engine of its own.
pub(super) fn load_builtin(ctx: &super::Context, name: &str) -> anyhow::Result<PreprocessPlugin> {
    let engine = gantry::engine::build().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let linker = base_linker(&engine).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let cache = ArtifactCache::new(&engine, ctx.cache_dir.clone());
    let plugin = PreprocessPlugin::builtin(&engine, &linker, &cache, name)?;
    Ok(plugin)
}

/// The f32 file the batches go to, created at the first batch (its width).
struct Output {
    path: PathBuf,
    writer: Option<F32Writer>,
    columns: usize,
}

impl Output {
    fn push(&mut self, t: Tensor) -> Result<(), String> {
        let width: usize = t.shape.iter().skip(1).map(|&d| d as usize).product();
        if self.writer.is_none() {
            self.columns = width;
            self.writer = Some(F32Writer::create(&self.path, width).map_err(|e| e.to_string())?);
        }
        if width != self.columns {
            return Err(format!(
                "a batch of width {width} after batches of {}",
                self.columns
            ));
        }
        self.writer
            .as_mut()
            .expect("created above")
            .push(&t.data)
            .map_err(|e| e.to_string())
    }
}

/// The file or the stored object of `args` through `plugin` into `sink`; the outer error is the
/// store's (the data directory could not be opened), the inner one the pipeline's.
fn stream(
    args: &Args,
    plugin: &PreprocessPlugin,
    config: PipelineConfig,
    sink: &mut dyn FnMut(Tensor) -> Result<(), String>,
) -> anyhow::Result<Result<PipelineStats, PipelineError>> {
    Ok(match (&args.file, &args.object) {
        (Some(file), _) => {
            let file = file.clone();
            let open =
                move || -> Result<Box<dyn std::io::Read + Send>, gantry::storage::StoreError> {
                    std::fs::File::open(&file)
                        .map(|f| Box::new(f) as Box<dyn std::io::Read + Send>)
                        .map_err(|error| gantry::storage::StoreError::Io {
                            path: file.clone(),
                            error,
                        })
                };
            pipeline::run(&open, plugin, config, sink)
        }
        (None, Some(id)) => {
            let store = Store::open(&args.dir.path()?)?;
            pipeline::run_object(&store, id, plugin, config, sink)
        }
        (None, None) => unreachable!("clap requires one"),
    })
}
