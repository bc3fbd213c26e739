//! The command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::model::{
    BackendKind, BackendOptions, Device, Gemma4, GenerationOptions, ImageSource, ModelOptions, Request, Sampling,
    Variant,
};

#[derive(Parser)]
#[command(
    name = "gemma-batch",
    version,
    about = "Run Gemma 4 (ONNX) over documents and images as batch jobs",
    after_help = "Examples:\n  \
        gemma-batch run pipelines/demo.toml\n  \
        gemma-batch run pipelines/demo.toml --shard 0/4 && gemma-batch commit pipelines/demo.toml\n  \
        gemma-batch generate --model models/tiny-gemma4 --prompt \"Describe this image.\" --image photo.png\n  \
        gemma-batch generate --model models/tiny-gemma4 --backend tract --prompt \"Hello\" --json"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline spec: read rows, ask the model, store results (resumable).
    #[cfg(feature = "pipeline")]
    #[command(after_help = "Examples:\n  \
        gemma-batch run pipelines/demo.toml\n  \
        gemma-batch run pipelines/demo.toml --limit 10            # try a spec on a few rows\n  \
        gemma-batch run pipelines/demo.toml --shard 2/8           # one of 8 shard processes\n  \
        gemma-batch run pipelines/demo.toml --shards 8            # index from JOB_COMPLETION_INDEX or SLURM_ARRAY_TASK_ID\n\n\
        Exit status: 0 all rows done, 3 some rows failed (see their error column), 130 interrupted (rerun to resume), 2 error.")]
    Run(RunArgs),
    /// Commit the results that shard processes wrote, as one new version.
    #[cfg(feature = "pipeline")]
    #[command(after_help = "Examples:\n  gemma-batch commit pipelines/demo.toml")]
    Commit(CommitArgs),
    /// Generate a reply to one prompt (with optional images).
    #[command(after_help = "Examples:\n  \
        gemma-batch generate --model models/tiny-gemma4 --prompt \"What is on this page?\" --image page.png\n  \
        gemma-batch generate --model DIR --system \"Answer briefly.\" --prompt \"Hi\" --temperature 0.8 --top-p 0.9 --seed 7 --json\n  \
        gemma-batch generate --model DIR --device cuda --dtype fp16 --prompt \"Hello\"")]
    Generate(GenerateArgs),
}

/// Where the model is and how to run it; shared by every subcommand that loads a model.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Model directory in the Gemma 4 ONNX community layout.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Inference engine: ONNX Runtime or tract (pure Rust, CPU only).
    #[arg(long, value_enum, default_value = "ort")]
    pub backend: BackendKind,
    /// auto uses CUDA when ONNX Runtime has it and falls back to the CPU (and says so).
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,
    /// Which exported variant to load (onnx/NAME{,_fp16,_q4,_q4f16,_quantized}.onnx).
    #[arg(long, value_enum, default_value = "fp32")]
    pub dtype: Variant,
    /// Intra-op threads (0: the backend decides).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Refuse images with more pixels than this (decompression bombs).
    #[arg(long, default_value_t = crate::prepare::image::DEFAULT_MAX_PIXELS)]
    pub max_image_pixels: u64,
}

impl ModelArgs {
    pub fn load(&self) -> Result<Gemma4> {
        let options = ModelOptions {
            backend: BackendOptions { kind: self.backend, device: self.device, threads: self.threads },
            variant: self.dtype,
            max_image_pixels: self.max_image_pixels,
            ..ModelOptions::default()
        };
        let model = Gemma4::load(&self.model, &options)
            .with_context(|| format!("loading model {}", self.model.display()))?;
        if let Some(reason) = &model.backend_info().fallback {
            eprintln!("gemma-batch: using the CPU: {reason}");
        }
        Ok(model)
    }
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The user prompt.
    #[arg(long)]
    prompt: String,
    /// A system prompt.
    #[arg(long)]
    system: Option<String>,
    /// An image to show the model (repeatable; order is kept).
    #[arg(long = "image", value_name = "PATH")]
    images: Vec<PathBuf>,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 (the default) decodes greedily.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep only the K most likely tokens when sampling (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P when sampling.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed for sampling; the same seed gives the same tokens.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object (text, token_ids, finish_reason, ...).
    #[arg(long)]
    json: bool,
}

#[cfg(feature = "pipeline")]
#[derive(Args)]
struct RunArgs {
    /// Pipeline spec (TOML); relative paths in it are relative to its directory.
    spec: PathBuf,
    /// Handle shard I of N (0-based): `--shard 0/4`.
    #[arg(long, value_name = "I/N", conflicts_with = "shards")]
    shard: Option<String>,
    /// Shard count, with the index taken from JOB_COMPLETION_INDEX (Kubernetes Indexed Job)
    /// or SLURM_ARRAY_TASK_ID (Slurm array; SLURM_ARRAY_TASK_COUNT gives the count if omitted).
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Read at most N input rows.
    #[arg(long)]
    limit: Option<usize>,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[cfg(feature = "pipeline")]
#[derive(Args)]
struct CommitArgs {
    /// Pipeline spec whose shard results to commit.
    spec: PathBuf,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate(args),
        #[cfg(feature = "pipeline")]
        Command::Run(args) => run(args),
        #[cfg(feature = "pipeline")]
        Command::Commit(args) => commit(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn generate(args: GenerateArgs) -> Result<ExitCode> {
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        anyhow::bail!("--top-p must be in (0, 1], got {}", args.top_p);
    }
    if args.temperature < 0.0 {
        anyhow::bail!("--temperature must not be negative, got {}", args.temperature);
    }
    let mut model = args.model.load()?;
    let request = Request {
        system: args.system.clone(),
        prompt: args.prompt.clone(),
        images: args.images.iter().cloned().map(ImageSource::Path).collect(),
    };
    let prepared = model.prepare(&request)?;
    let sampling = (args.temperature > 0.0).then_some(Sampling {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    });
    let options = GenerationOptions { max_new_tokens: args.max_new_tokens, sampling };
    let out = model.generate(std::slice::from_ref(&prepared), &options)?.remove(0);
    if args.json {
        let info = model.backend_info();
        let value = serde_json::json!({
            "text": out.text,
            "token_ids": out.token_ids,
            "finish_reason": out.finish_reason,
            "prompt_tokens": out.prompt_tokens,
            "backend": info.backend,
            "device": info.device,
            "dtype": args.model.dtype,
            "model": args.model.model.display().to_string(),
        });
        println!("{value}");
    } else {
        println!("{}", out.text);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "pipeline")]
fn run(args: RunArgs) -> Result<ExitCode> {
    use crate::pipeline::{RunOptions, Shard};
    let spec = crate::spec::PipelineSpec::load(&args.spec)?;
    let shard = match (&args.shard, args.shards) {
        (Some(s), _) => Some(Shard::parse(s).map_err(anyhow::Error::msg)?),
        (None, count) => Shard::from_env(count).map_err(anyhow::Error::msg)?,
    };
    let options = RunOptions { shard, limit: args.limit, quiet: args.quiet };
    let summary = crate::pipeline::run(&spec, &options).with_context(|| format!("running {}", args.spec.display()))?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("{}: {} rows read, {} done, {} failed, {} skipped as already done ({:.1}s)",
            spec.name, summary.rows_read, summary.done, summary.failed, summary.skipped, summary.elapsed_s);
        match (summary.version, shard) {
            (Some(v), _) => println!("results: {} (version {v})", summary.results),
            (None, Some(s)) => println!("results: written for shard {}/{}; commit them with `gemma-batch commit {}`",
                s.index, s.count, args.spec.display()),
            (None, None) => println!("results: {} (nothing new to commit)", summary.results),
        }
        if !summary.by_task.is_empty() {
            println!("{:<24} {:>8} {:>8} {:>14} {:>14}", "task", "rows", "failed", "mean ms/batch", "output tokens");
            for t in &summary.by_task {
                println!("{:<24} {:>8} {:>8} {:>14} {:>14}", t.task, t.rows, t.failed,
                    t.mean_latency_ms.map(|m| format!("{m:.1}")).unwrap_or_else(|| "-".into()), t.output_tokens);
            }
        }
        if let Some(p) = &spec.sink.parquet {
            println!("export: {}", spec.resolve(p).display());
        }
        if let Some(p) = &spec.sink.jsonl {
            println!("export: {}", spec.resolve(p).display());
        }
    }
    Ok(if summary.interrupted {
        eprintln!("gemma-batch: interrupted; rerun the same command to resume");
        ExitCode::from(130)
    } else if summary.failed > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(feature = "pipeline")]
fn commit(args: CommitArgs) -> Result<ExitCode> {
    let spec = crate::spec::PipelineSpec::load(&args.spec)?;
    match crate::pipeline::commit(&spec)? {
        (Some(v), n) => println!("committed {n} shard result files as version {v}"),
        (None, _) => println!("nothing to commit"),
    }
    Ok(ExitCode::SUCCESS)
}
