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
        gemma-batch generate --model models/tiny-gemma4 --prompt \"Describe this image.\" --image photo.png\n  \
        gemma-batch generate --model models/tiny-gemma4 --backend tract --prompt \"Hello\" --json"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate(args),
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
