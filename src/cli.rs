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
        gemma-batch run --openai-batch requests.jsonl --model models/tiny-gemma4 --out results.jsonl\n  \
        echo \"mail jane@example.org\" | gemma-batch filter --set default --no-policy\n  \
        gemma-batch eval evals/demo.toml && gemma-batch report --compare OLD/record.json runs/eval-demo/report\n  \
        gemma-batch generate --model models/tiny-gemma4 --prompt \"Describe this image.\" --image photo.png"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline spec: read rows, ask the model, store results (resumable).
    #[command(after_help = "Examples:\n  \
        gemma-batch run pipelines/demo.toml\n  \
        gemma-batch run pipelines/demo.toml --limit 10            # try a spec on a few rows\n  \
        gemma-batch run pipelines/demo.toml --shard 2/8           # one of 8 shard processes\n  \
        gemma-batch run pipelines/demo.toml --shards 8            # index from the scheduler (see --shards)\n  \
        gemma-batch run pipelines/demo.toml --max-attempts 5      # retry failed rows, 5 tries in all\n  \
        gemma-batch run pipelines/demo.toml --wait                # wait while another run holds the sink\n  \
        gemma-batch run --openai-batch requests.jsonl --model models/tiny-gemma4 --out results.jsonl\n\n\
        --openai-batch runs an OpenAI Batch API / vLLM run-batch request file unchanged: it writes a spec\n\
        (SINK/spec.toml; rerun it with `gemma-batch run SINK/spec.toml`), runs it and writes one output line\n\
        per request (a response, or an error with a code: invalid_request, duplicate_custom_id, ...).\n\n\
        Rerunning skips rows already done and retries failed ones. Every (row, task, configuration) is\n\
        stored once, whatever runs overlap. SIGINT or SIGTERM: the rows in flight are committed and the\n\
        run exits resumable; a second signal stops at once.\n\n\
        Exit status: 0 all rows done, 3 rows of this spec are failed in the table (see their error column),\n\
        130/143 interrupted by SIGINT/SIGTERM (rerun to resume), 75 another run holds this sink, 2 error.")]
    Run(RunArgs),
    /// Commit the results that shard processes wrote, as one new version.
    #[command(after_help = "Examples:\n  gemma-batch commit pipelines/demo.toml\n\n\
        Safe to run while shards are still running, and more than once: rows are merged on their key.\n\
        Exit status: 0, or 3 when the table holds failed rows (listed; rerun the shards to retry\n\
        them), 75 another commit holds the sink, 2 error.")]
    Commit(CommitArgs),
    /// List the versions of a spec's results table: the run that made each, its counts, its spec hash.
    #[command(after_help = "Examples:\n  \
        gemma-batch history pipelines/demo.toml\n  \
        gemma-batch history pipelines/demo.toml --json > history.json\n\n\
        Every run tags the last version it wrote run-<run id>; `gemma-batch commit` does the same for shards.")]
    History(HistoryArgs),
    /// Compact a spec's tables and remove old versions (never the latest or a tagged one).
    #[command(after_help = "Examples:\n  \
        gemma-batch compact pipelines/demo.toml                      # compact; remove untagged versions older than 7 days\n  \
        gemma-batch compact pipelines/demo.toml --keep-versions 20   # keep the newest 20 versions (and tagged ones)\n  \
        gemma-batch compact pipelines/demo.toml --older-than 0       # keep only the latest and tagged versions\n  \
        gemma-batch compact pipelines/demo.toml --keep-all           # compact fragments only\n\n\
        Every commit of a run adds a small fragment and a version; reads slow down as they pile up.\n\
        Compaction rewrites them into few large fragments (a new version; the rows are unchanged).\n\
        Versions that runs tagged (run-<run id>) stay readable. Exit status 75 while a run or commit\n\
        holds the sink (--wait to wait for it).")]
    Compact(CompactArgs),
    /// Screen text (lines of a file or stdin) and images with a filter set; print the decisions.
    #[command(after_help = "Examples:\n  \
        echo 'mail me at jane@example.org' | gemma-batch filter --set default\n  \
        gemma-batch filter --set default --json notes.txt           # one JSON object per line\n  \
        gemma-batch filter --set filters/strict.toml --no-policy < corpus.txt\n  \
        gemma-batch filter --set default --model models/tiny-gemma4 --image photo.png\n\n\
        A set NAME is filters/NAME.toml (or give a path). The policy filter needs a model: --model, or\n\
        `model` in the set's [policy]; --no-policy skips it. Exit status: 0 nothing fired, 1 something\n\
        fired, 2 error.")]
    Filter(FilterArgs),
    /// Run an evaluation suite: benchmarks, bias, safety; write the reports; check gates.
    #[command(after_help = "Examples:\n  \
        gemma-batch eval evals/demo.toml\n  \
        gemma-batch eval evals/demo.toml --gate docs_qa.anls=min:0.3 --gate bbq.all.bias_ambiguous=max_abs:0.2\n\n\
        Writes record.json, report.html and report.md to the suite's reports directory.\n\
        Exit status: 0 all gates passed, 1 a gate failed (listed in the reports; a gate over no scored\n\
        items, or on a value the record lacks, fails), 2 error.")]
    Eval(EvalArgs),
    /// Score outputs that already exist: another system's predictions, or stored results.
    #[command(after_help = "Examples:\n  \
        gemma-batch score evals/demo.toml --predictions vendor.jsonl\n  \
        gemma-batch score evals/demo.toml --predictions answers.csv --id-column qid --prediction-column answer\n  \
        gemma-batch score evals/demo.toml --predictions runs/eval-demo/report/predictions.jsonl\n  \
        gemma-batch score evals/demo.toml --results runs/eval-demo     # after a metric or label fix\n\n\
        A predictions file (JSON lines, CSV or Parquet) has an id column and a prediction column, and\n\
        optionally `part` (the suite part a row answers: a benchmark name, bbq-NAME, cf-NAME or safety;\n\
        needed when an id is an item of two parts), `error`, `output_tokens`, `filter_decisions` and\n\
        `policy_scores`.\n\
        `eval` writes its outputs as predictions.jsonl in this layout. BBQ items are CATEGORY-EXAMPLE_ID.\n\
        Without filter decisions in the file, the rule-based filters screen prompts and predictions;\n\
        the policy filter needs the model and does not run.\n\n\
        --results reads the rows stored for the configuration the suite names now (model files,\n\
        prompts, filter sets); nothing is generated. Either way, items without an output are listed\n\
        and counted in the reports, never scored.\n\n\
        Exit status: 0 all gates passed and every item had an output, 1 a gate failed or items had no\n\
        output (--allow-missing: gates only), 2 error.")]
    Score(ScoreArgs),
    /// Render an evaluation record again, or compare two runs.
    #[command(after_help = "Examples:\n  \
        gemma-batch report runs/eval-demo/report                 # re-render report.html / report.md\n  \
        gemma-batch report --compare nightly-01/record.json nightly-02/record.json\n\n\
        With --compare: exit status 1 when B regressed on a metric by more than the intervals allow,\n\
        lacks one of A's metrics, or has no scored items (or no number) for it; 2 when A has no metrics.")]
    Report(ReportArgs),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCommand),
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

#[derive(Args)]
struct RunArgs {
    /// Pipeline spec (TOML); relative paths in it are relative to its directory.
    #[arg(required_unless_present = "openai_batch", conflicts_with = "openai_batch")]
    spec: Option<PathBuf>,
    /// Run an OpenAI Batch API (or vLLM run-batch) request file as it is: writes a spec for it
    /// into the sink directory, runs it (resumable) and writes --out in the batch output layout.
    #[arg(long, value_name = "REQUESTS", requires_all = ["model", "out"])]
    openai_batch: Option<PathBuf>,
    /// With --openai-batch: the model directory.
    #[arg(long, value_name = "DIR", requires = "openai_batch")]
    model: Option<PathBuf>,
    /// With --openai-batch: the output file (one JSON line per request).
    #[arg(long, value_name = "FILE", requires = "openai_batch")]
    out: Option<PathBuf>,
    /// With --openai-batch: where the spec, the results tables and run records go (default:
    /// OUT's name with .gemma-batch, beside it).
    #[arg(long, value_name = "DIR", requires = "openai_batch")]
    sink: Option<PathBuf>,
    /// With --openai-batch: new tokens for requests that set neither max_completion_tokens nor max_tokens.
    #[arg(long, value_name = "N", default_value_t = 256, requires = "openai_batch")]
    max_new_tokens: usize,
    /// With --openai-batch: rows decoding together.
    #[arg(long, value_name = "N", default_value_t = 8, requires = "openai_batch")]
    batch_size: usize,
    /// With --openai-batch: inference engine.
    #[arg(long, value_enum, default_value = "ort", requires = "openai_batch")]
    backend: BackendKind,
    /// With --openai-batch: auto uses CUDA when ONNX Runtime has it.
    #[arg(long, value_enum, default_value = "auto", requires = "openai_batch")]
    device: Device,
    /// With --openai-batch: which exported variant to load.
    #[arg(long, value_enum, default_value = "fp32", requires = "openai_batch")]
    dtype: Variant,
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
    /// Do not retry rows that failed in earlier runs.
    #[arg(long)]
    no_retry_failed: bool,
    /// Tries per row in all, counting earlier runs (failed rows are retried until then).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    max_attempts: u32,
    /// When another run holds this sink (or shard), wait for it instead of exiting with 75.
    #[arg(long)]
    wait: bool,
    /// Run even when another run holds this sink: the table stays right (rows are merged on
    /// their key), but the work is done twice.
    #[arg(long, conflicts_with = "wait")]
    ignore_lease: bool,
}

#[derive(Args)]
struct FilterArgs {
    /// Filter set: a name (filters/NAME.toml) or a path to a TOML file.
    #[arg(long = "set", value_name = "NAME")]
    set: String,
    /// Text to screen, one item per line (default: stdin).
    file: Option<PathBuf>,
    /// An image to screen with the policy filter (repeatable).
    #[arg(long = "image", value_name = "PATH")]
    images: Vec<PathBuf>,
    /// Print one JSON object per item: text after actions, outcome, decisions.
    #[arg(long)]
    json: bool,
    /// Skip the model policy filter.
    #[arg(long)]
    no_policy: bool,
    /// Model for the policy filter (default: the set's [policy] model).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "ort")]
    backend: BackendKind,
    #[arg(long, value_enum, default_value = "auto")]
    device: Device,
    #[arg(long, value_enum, default_value = "fp32")]
    dtype: Variant,
}

#[derive(Args)]
struct EvalArgs {
    /// Suite spec (TOML); relative paths in it are relative to its directory.
    suite: PathBuf,
    /// An extra gate, NAME=min:X | max:X | max_abs:X (NAME like docs_qa.anls, bbq.all.bias_ambiguous).
    #[arg(long = "gate", value_name = "NAME=KIND:X")]
    gates: Vec<String>,
    /// Write the reports here instead of the suite's reports directory.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("outputs").required(true).args(["predictions", "results"])))]
struct ScoreArgs {
    /// Suite spec (TOML) whose items, labels, metrics and gates to use.
    suite: PathBuf,
    /// A file of predictions (JSON lines, CSV or Parquet) to score.
    #[arg(long, value_name = "FILE")]
    predictions: Option<PathBuf>,
    /// A directory of stored results laid out as the suite's sink.dir (PART/out/results.lance).
    #[arg(long, value_name = "DIR")]
    results: Option<PathBuf>,
    /// The predictions file's id column.
    #[arg(long, default_value = "id", value_name = "NAME")]
    id_column: String,
    /// The predictions file's prediction column.
    #[arg(long, default_value = "prediction", value_name = "NAME")]
    prediction_column: String,
    /// An extra gate, NAME=min:X | max:X | max_abs:X.
    #[arg(long = "gate", value_name = "NAME=KIND:X")]
    gates: Vec<String>,
    /// Where to write the reports (default: FILE's name + "-report" beside it, or DIR/rescored).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Exit 0 even when items had no output (they are still listed in the reports).
    #[arg(long)]
    allow_missing: bool,
}

#[derive(Args)]
struct ReportArgs {
    /// An evaluation record (record.json) or the directory holding it.
    #[arg(required_unless_present = "compare")]
    record: Option<PathBuf>,
    /// Compare two runs (records or their directories): A is the baseline.
    #[arg(long, num_args = 2, value_names = ["RUN_A", "RUN_B"])]
    compare: Option<Vec<PathBuf>>,
    /// Where to write the rendered files (default: beside the record).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Time a filter set's rule-based filters on single-line inputs of growing size.
    #[command(after_help = "Examples:\n  gemma-batch bench filters --set default\n  gemma-batch bench filters --set pii-only --sizes-mb 1,10,50")]
    Filters(BenchFiltersArgs),
    /// Generation throughput: tokens/s and items/s per batch size, measured in one process.
    #[command(after_help = "Examples:\n  gemma-batch bench generate --model models/tiny-gemma4\n  \
gemma-batch bench generate --model models/bench-gemma4 --batch 1,8 --prompts 64 --new-tokens 32 --json bench.json\n  \
gemma-batch bench generate --model DIR --prompts-file questions.txt --device cuda\n\n\
Prompts are 4 to 40 words (fixed seed) unless --prompts-file gives one per line. Greedy decoding\n\
through the same continuous batch as `gemma-batch run`; one warm-up run comes first.\n\
tools/bench-generate.sh runs this and a plain Python onnxruntime loop over the same prompts\n\
and prints the ratios.")]
    Generate(BenchGenerateArgs),
    /// Read time of a results table after many small commits, before and after `compact`.
    #[command(after_help = "Examples:\n  gemma-batch bench compact\n  gemma-batch bench compact --rows 100000 --commits 500\n\n\
Builds the tables in a temporary directory (--dir to keep them) and reads each whole table.")]
    Compact(BenchCompactArgs),
    /// Peak memory of exporting results tables of growing size (streamed exports stay flat).
    #[command(after_help = "Examples:\n  gemma-batch bench export\n  \
gemma-batch bench export --rows 10000,1000000 --formats parquet,jsonl --dir export-bench\n\n\
Writes a results table of synthetic rows (with kept input columns) for each size, then exports it\n\
in a fresh process of its own and prints that process's peak resident memory (VmHWM).")]
    Export(BenchExportArgs),
    /// Prefill time and peak memory with last-position logits against every position's.
    #[command(after_help = "Examples:\n  gemma-batch bench prefill --model models/bench-gemma4\n  \
gemma-batch bench prefill --model DIR --batch 8 --tokens 512 --repeats 3\n\n\
Each mode runs in a process of its own, so each peak RSS is that mode's. With a graph that has \
num_logits_to_keep, prefill computes the logits of the last position only; the other mode \
computes them for every position, as a graph without the input must.")]
    Prefill(BenchPrefillArgs),
}

#[derive(Args)]
struct BenchPrefillArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompts prefilled together.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Tokens per prompt.
    #[arg(long, default_value_t = 512)]
    tokens: usize,
    /// Timed prefills per mode; the best is reported.
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    /// Internal: run one mode (last or all) in this process and print the figure as JSON.
    #[arg(long, value_name = "MODE", hide = true)]
    logits_only: Option<String>,
}

#[derive(Args)]
struct BenchCompactArgs {
    /// Rows in the table.
    #[arg(long, default_value_t = 10_000)]
    rows: usize,
    /// Commits that write them (a nightly run commits at least once).
    #[arg(long, default_value_t = 150)]
    commits: usize,
    /// Reads per table; the best is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Where to build the tables (kept); default a temporary directory, removed after.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(Args)]
struct BenchExportArgs {
    /// Table sizes in rows; ratios are against the first.
    #[arg(long, value_delimiter = ',', default_value = "10000,1000000")]
    rows: Vec<usize>,
    /// Export formats to measure (also `scan`: reading the table alone; `frames`: reading it
    /// into polars frames, as the exports do).
    #[arg(long, value_delimiter = ',', default_value = "parquet,jsonl")]
    formats: Vec<String>,
    /// Rows per data file of the tables written (a run writes one fragment per commit of at
    /// most sink.commit_every rows; a compacted table has files of up to a million rows).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    rows_per_file: usize,
    /// Where the tables and exports go (kept); default a temporary directory, removed after.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Internal: export the table in DIR in this process and print the figure as JSON.
    #[arg(long, value_name = "DIR", hide = true)]
    export_only: Option<PathBuf>,
}

#[derive(Args)]
struct BenchGenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Batch sizes (rows decoding together) to measure; ratios are against the first.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    batch: Vec<usize>,
    /// Number of generated prompts.
    #[arg(long, default_value_t = 64)]
    prompts: usize,
    /// Read prompts from this file instead, one per line (blank lines skipped).
    #[arg(long, value_name = "FILE", conflicts_with = "prompts")]
    prompts_file: Option<PathBuf>,
    /// New tokens per prompt (greedy; fewer when an end-of-generation token comes first).
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// Generate exactly --new-tokens per prompt: end-of-generation tokens do not stop a row.
    #[arg(long)]
    ignore_eos: bool,
    /// Write prompts (token ids), figures and outputs as JSON, for tools/bench_ort_loop.py.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct BenchFiltersArgs {
    /// Filter set: a name (filters/NAME.toml) or a path.
    #[arg(long = "set", value_name = "NAME", default_value = "default")]
    set: String,
    /// Input sizes in MB (one line each); ratios are against the first.
    #[arg(long, value_delimiter = ',', default_value = "1,10")]
    sizes_mb: Vec<f64>,
    /// Runs per size; the best is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
}

#[derive(Args)]
struct HistoryArgs {
    /// Pipeline spec whose results table to list.
    spec: PathBuf,
    /// Print the versions and runs as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CompactArgs {
    /// Pipeline spec whose tables to compact.
    spec: PathBuf,
    /// Keep the newest N versions (and every tagged one).
    #[arg(long, value_name = "N", conflicts_with_all = ["older_than", "keep_all"], value_parser = clap::value_parser!(u64).range(1..))]
    keep_versions: Option<u64>,
    /// Keep versions younger than DAYS (and every tagged one). Default: 7.
    #[arg(long, value_name = "DAYS", conflicts_with = "keep_all")]
    older_than: Option<f64>,
    /// Remove no versions; only compact.
    #[arg(long)]
    keep_all: bool,
    /// When a run or commit holds the sink, wait for it instead of exiting with 75.
    #[arg(long)]
    wait: bool,
}

#[derive(Args)]
struct CommitArgs {
    /// Pipeline spec whose shard results to commit.
    spec: PathBuf,
    /// When another commit of this sink is running, wait for it instead of exiting with 75.
    #[arg(long)]
    wait: bool,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate(args),
        Command::Run(args) => run(args),
        Command::Commit(args) => commit(args),
        Command::History(args) => history(args),
        Command::Compact(args) => compact(args),
        Command::Filter(args) => filter(args),
        Command::Eval(args) => eval(args),
        Command::Score(args) => score(args),
        Command::Report(args) => report(args),
        Command::Bench(BenchCommand::Filters(args)) => bench_filters(args),
        Command::Bench(BenchCommand::Generate(args)) => bench_generate(args),
        Command::Bench(BenchCommand::Compact(args)) => bench_compact(args),
        Command::Bench(BenchCommand::Export(args)) => bench_export(args),
        Command::Bench(BenchCommand::Prefill(args)) => bench_prefill(args),
    };
    match result {
        Ok(code) => code,
        Err(e) if matches!(e.downcast_ref::<crate::Error>(), Some(crate::Error::LeaseHeld(_))) => {
            // The lease's own message (who holds it, what to do), not a context around it such
            // as eval's "running SUITE".
            let held = e.downcast_ref::<crate::Error>().map_or_else(|| e.to_string(), ToString::to_string);
            eprintln!("gemma-batch: {held}");
            // EX_TEMPFAIL: try again later.
            ExitCode::from(75)
        }
        Err(e) => {
            // The chain of causes, each once (typed errors often show their source inline).
            let mut message = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !message.contains(&c) {
                    message.push_str(": ");
                    message.push_str(&c);
                }
            }
            eprintln!("error: {message}");
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

/// The spec `run --openai-batch` writes: the request file, the model, one `chat` task and the
/// OpenAI output, with the results tables in the sink directory beside it.
fn openai_batch_spec(args: &RunArgs, requests: &std::path::Path) -> Result<PathBuf> {
    use toml::Value as V;
    let (model, out) = (args.model.as_ref().expect("clap requires it"), args.out.as_ref().expect("clap requires it"));
    anyhow::ensure!(requests.is_file(), "--openai-batch {}: not a file", requests.display());
    let out = std::path::absolute(out)?;
    let sink = match &args.sink {
        Some(s) => std::path::absolute(s)?,
        None => {
            let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "results".into());
            out.with_file_name(format!("{stem}.gemma-batch"))
        }
    };
    std::fs::create_dir_all(&sink).with_context(|| format!("creating {}", sink.display()))?;
    // TOML strings, quoted and escaped.
    let q = |s: String| V::String(s).to_string();
    let abs = |p: &std::path::Path| -> Result<String> { Ok(q(std::path::absolute(p)?.display().to_string())) };
    let text = format!(
        "# Written by `gemma-batch run --openai-batch`; run it again with `gemma-batch run {spec}`.\n\
         # Requests without max_completion_tokens / max_tokens get the task's max_new_tokens; requests\n\
         # without temperature are decoded greedily.\n\
         name = \"openai-batch\"\n\n\
         [source]\nkind = \"openai_batch\"\npath = {requests}\n\n\
         [model]\ndir = {model}\nbackend = {backend}\ndevice = {device}\ndtype = {dtype}\nbatch_size = {batch}\n\n\
         [[task]]\nname = \"chat\"\nkind = \"chat\"\nmax_new_tokens = {max_new}\n\n\
         [sink]\ndir = \".\"\nopenai_batch = {out}\n",
        spec = sink.join("spec.toml").display(),
        requests = abs(requests)?,
        model = abs(model)?,
        backend = q(crate::util::enum_name(&args.backend)),
        device = q(crate::util::enum_name(&args.device)),
        dtype = q(crate::util::enum_name(&args.dtype)),
        batch = args.batch_size,
        max_new = args.max_new_tokens,
        out = abs(&out)?,
    );
    let path = sink.join("spec.toml");
    crate::sink::export::write_atomically(&path, |f| {
        use std::io::Write;
        f.write_all(text.as_bytes()).map_err(|e| crate::Error::io(&path, e))
    })?;
    Ok(path)
}

fn run(args: RunArgs) -> Result<ExitCode> {
    use crate::pipeline::{RunOptions, Shard};
    let spec_path = match (&args.spec, &args.openai_batch) {
        (Some(p), _) => p.clone(),
        (None, Some(requests)) => openai_batch_spec(&args, requests)?,
        (None, None) => unreachable!("clap requires one"),
    };
    let spec = crate::spec::PipelineSpec::load(&spec_path)?;
    let shard = match (&args.shard, args.shards) {
        (Some(s), _) => Some(Shard::parse(s).map_err(anyhow::Error::msg)?),
        (None, count) => Shard::from_env(count).map_err(anyhow::Error::msg)?,
    };
    let options = RunOptions {
        shard,
        limit: args.limit,
        quiet: args.quiet,
        retry_failed: !args.no_retry_failed,
        max_attempts: args.max_attempts,
        wait_for_lease: args.wait,
        ignore_lease: args.ignore_lease,
        collect_keys: false,
    };
    let summary = match crate::pipeline::run(&spec, &options) {
        Ok(s) => s,
        // Not "running SPEC: ...": the message already says what to do.
        Err(e @ crate::Error::LeaseHeld(_)) => return Err(e.into()),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("running {}", spec_path.display()))),
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("{}: {} rows read, {} done, {} failed, {} skipped as already done ({:.1}s)",
            spec.name, summary.rows_read, summary.done, summary.failed, summary.skipped, summary.elapsed_s);
        if summary.duplicates > 0 {
            println!("{} items repeated a key of this run (identical rows or questions) and were done once", summary.duplicates);
        }
        if summary.retried > 0 {
            println!("{} rows that failed before were retried", summary.retried);
        }
        if summary.failed_not_retried > 0 {
            println!("{} rows failed in earlier runs and were not retried (--max-attempts {} reached{}); see their error column",
                summary.failed_not_retried, options.max_attempts, if options.retry_failed { "" } else { " or --no-retry-failed" });
        }
        match (summary.version, shard) {
            (Some(v), _) => println!("results: {} (version {v})", summary.results),
            (None, Some(s)) => println!("results: written for shard {}/{}; commit them with `gemma-batch commit {}`",
                s.index, s.count, spec_path.display()),
            (None, None) => println!("results: {} (nothing new to commit)", summary.results),
        }
        println!("run records: {} (spec, versions, start/end and counts of every run)", summary.runs);
        if summary.quarantined > 0 {
            println!("quarantine: {} ({} rows this run)", summary.quarantine, summary.quarantined);
        }
        if !summary.by_task.is_empty() {
            println!("{:<24} {:>8} {:>8} {:>14} {:>14}", "task", "rows", "failed", "mean ms/row", "output tokens");
            for t in &summary.by_task {
                println!("{:<24} {:>8} {:>8} {:>14} {:>14}", t.task, t.rows, t.failed,
                    t.mean_latency_ms.map(|m| format!("{m:.1}")).unwrap_or_else(|| "-".into()), t.output_tokens);
            }
        }
        for p in [&spec.sink.parquet, &spec.sink.jsonl].into_iter().flatten() {
            match shard {
                // Shards stage their rows; the commit writes the exports.
                Some(_) => println!("export: {} is written by `gemma-batch commit {}`", spec.resolve(p).display(), spec_path.display()),
                None => println!("export: {}", spec.resolve(p).display()),
            }
        }
        match (&summary.openai_batch, &spec.sink.openai_batch) {
            (Some(o), _) => println!("output: {} ({} lines: {} responses, {} errors)", o.path, o.lines, o.responses, o.errors),
            (None, Some(p)) if !summary.interrupted && shard.is_some() => {
                println!("output: {} is written by `gemma-batch commit {}`", spec.resolve(p).display(), spec_path.display())
            }
            _ => {}
        }
        if args.openai_batch.is_some() {
            println!("spec: {} (rerun with `gemma-batch run {}`)", spec_path.display(), spec_path.display());
        }
    }
    Ok(if summary.interrupted {
        let signal = summary.signal.unwrap_or(2);
        eprintln!("gemma-batch: interrupted by {}; rerun the same command to resume", crate::pipeline::signals::signal_name(signal));
        ExitCode::from(crate::pipeline::signals::exit_status(signal))
    } else if summary.failed_in_table > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

fn commit(args: CommitArgs) -> Result<ExitCode> {
    let spec = crate::spec::PipelineSpec::load(&args.spec)?;
    let c = crate::pipeline::commit(&spec, args.wait)?;
    match c.version {
        Some(v) => println!("committed {} staged shard results ({} rows) as version {v}", c.staged, c.rows),
        None if c.staged > 0 => println!("{} staged shard results were already committed; removed them", c.staged),
        None => println!("nothing to commit"),
    }
    // What a cluster job reports at the end: the rows that failed, in every shard.
    let failed = crate::pipeline::failed_rows(&spec)?;
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("{} failed rows in {} (their error column says why; rerun the shards to retry them):", failed.len(), spec.resolve(&spec.sink.dir).join("results.lance").display());
    for (id, task, error) in failed.iter().take(10) {
        eprintln!("  {id} [{task}]: {error}");
    }
    if failed.len() > 10 {
        eprintln!("  ... and {} more", failed.len() - 10);
    }
    Ok(ExitCode::from(3))
}

fn filter(args: FilterArgs) -> Result<ExitCode> {
    use crate::filters::{FilterSet, PolicyItem, Screening};
    use std::io::BufRead;
    let path = crate::filters::resolve_set(&args.set, &[PathBuf::from("filters")])?;
    let set = FilterSet::load(&path)?;
    let mut model = match set.policy() {
        Some(policy) if !args.no_policy => {
            let dir = args.model.clone().or_else(|| policy.model.clone()).with_context(|| {
                format!("filter set {} has a policy filter, which needs a model: give --model DIR, or --no-policy", path.display())
            })?;
            let margs = ModelArgs {
                model: dir,
                backend: args.backend,
                device: args.device,
                dtype: args.dtype,
                threads: 0,
                max_image_pixels: crate::prepare::image::DEFAULT_MAX_PIXELS,
            };
            Some(margs.load()?)
        }
        _ => None,
    };
    if !args.images.is_empty() && model.is_none() {
        anyhow::bail!("--image needs the policy filter (a set with [policy] and a model)");
    }

    let reader: Box<dyn BufRead> = match &args.file {
        Some(f) => Box::new(std::io::BufReader::new(
            std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let source = args.file.as_ref().map(|f| f.display().to_string()).unwrap_or_else(|| "stdin".into());
    let mut out = ScreeningPrinter { json: args.json, fired: false, failed: false };
    // Lines are screened in chunks so the policy filter can batch them.
    let mut chunk: Vec<Line> = Vec::new();
    // Each line: its text, or why it could not be read (kept in order with the others).
    type Line = (usize, std::result::Result<String, String>);
    let flush = |chunk: &mut Vec<Line>, model: &mut Option<crate::model::Gemma4>, out: &mut ScreeningPrinter| -> Result<()> {
        let empty = || Screening { text: String::new(), decisions: Vec::new() };
        let mut screenings: Vec<Screening> =
            chunk.iter().map(|(_, l)| l.as_ref().map(|l| set.screen(l, None)).unwrap_or_else(|_| empty())).collect();
        let mut errors: Vec<Option<String>> = chunk.iter().map(|(_, l)| l.as_ref().err().cloned()).collect();
        if let (Some(m), Some(policy)) = (model.as_mut(), set.policy()) {
            let readable: Vec<usize> = (0..chunk.len()).filter(|&i| chunk[i].1.is_ok()).collect();
            let items: Vec<PolicyItem> =
                readable.iter().map(|&i| PolicyItem::Text(chunk[i].1.as_ref().cloned().unwrap_or_default())).collect();
            for (&i, r) in readable.iter().zip(policy.score(m, &items)?) {
                match r {
                    Ok(scores) => set.add_policy_decisions(&mut screenings[i].decisions, "text", &scores, None),
                    Err(e) => errors[i] = Some(e),
                }
            }
        }
        for (((n, line), s), e) in chunk.drain(..).zip(screenings).zip(errors) {
            out.print(format!("{source}:{n}"), line.as_deref().ok(), &s, e);
        }
        Ok(())
    };
    for (i, line) in reader.split(b'\n').enumerate() {
        let bytes = line.with_context(|| format!("reading {source}"))?;
        let n = i + 1;
        chunk.push((n, String::from_utf8(bytes).map(|l| l.trim_end_matches('\r').to_string()).map_err(|e| format!("not valid UTF-8 ({e})"))));
        if chunk.len() >= 64 {
            flush(&mut chunk, &mut model, &mut out)?;
        }
    }
    flush(&mut chunk, &mut model, &mut out)?;
    if let (Some(m), Some(policy)) = (model.as_mut(), set.policy()) {
        let items: Vec<PolicyItem> = args.images.iter().map(|p| PolicyItem::Image(ImageSource::Path(p.clone()))).collect();
        for (p, r) in args.images.iter().zip(policy.score(m, &items)?) {
            let mut s = Screening { text: String::new(), decisions: Vec::new() };
            let error = match r {
                Ok(scores) => {
                    set.add_policy_decisions(&mut s.decisions, "image", &scores, None);
                    None
                }
                Err(e) => Some(e),
            };
            out.print(p.display().to_string(), None, &s, error);
        }
    }
    Ok(if out.failed {
        ExitCode::from(2)
    } else if out.fired {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints screenings as text or JSON lines, remembering whether anything fired or failed.
struct ScreeningPrinter {
    json: bool,
    fired: bool,
    failed: bool,
}

impl ScreeningPrinter {
    fn print(&mut self, label: String, item_text: Option<&str>, screening: &crate::filters::Screening, error: Option<String>) {
        self.fired |= !screening.decisions.is_empty();
        self.failed |= error.is_some();
        if self.json {
            let value = serde_json::json!({
                "item": label, "text": screening.text, "outcome": screening.outcome(),
                "decisions": screening.decisions, "error": error,
            });
            println!("{value}");
            return;
        }
        if let Some(e) = error {
            println!("{label}: error: {e}");
            return;
        }
        if screening.decisions.is_empty() {
            println!("{label}: pass");
            return;
        }
        println!("{label}: {}", screening.outcome().name());
        for d in &screening.decisions {
            let matched = match (d.span, item_text) {
                (Some([a, b]), Some(t)) => format!(" [{a}..{b}] {:?}", t.get(a..b).unwrap_or("")),
                _ => String::new(),
            };
            println!("  {}:{} ({}) score {:.3} -> {}{matched}", d.filter, d.rule, d.category, d.score, d.action.as_str());
        }
        if item_text.is_some_and(|t| t != screening.text) {
            println!("  => {}", screening.text);
        }
    }
}

fn bench_filters(args: BenchFiltersArgs) -> Result<ExitCode> {
    let path = crate::filters::resolve_set(&args.set, &[PathBuf::from("filters")])?;
    let set = crate::filters::FilterSet::load(&path)?;
    let sizes: Vec<usize> = args.sizes_mb.iter().map(|mb| (mb * 1_000_000.0) as usize).collect();
    let timings = crate::bench::filters(&set, &sizes, args.repeats);
    println!("filter set {} (rule-based filters), one line per size, best of {}", path.display(), args.repeats);
    println!("{:>10} {:>10} {:>10} {:>10} {:>14}", "bytes", "seconds", "MB/s", "decisions", "time ratio");
    let base = timings.first().map(|t| t.seconds).unwrap_or(1.0);
    for t in &timings {
        println!("{:>10} {:>10.3} {:>10.2} {:>10} {:>13.2}x", t.bytes, t.seconds, t.bytes as f64 / 1e6 / t.seconds, t.decisions, t.seconds / base);
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_compact(args: BenchCompactArgs) -> Result<ExitCode> {
    anyhow::ensure!(args.rows > 0 && args.commits > 0 && args.commits <= args.rows, "--rows and --commits: at least 1 commit, and no more commits than rows");
    let dir = args.dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("gemma-batch-bench-compact-{}", std::process::id())));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = crate::bench::compaction(&dir, args.rows, args.commits, args.repeats);
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let t = result?;
    println!("{} rows; full-table read, best of {}", t.rows, args.repeats);
    println!("{:<34} {:>9} {:>10} {:>8}", "table", "fragments", "read (ms)", "ratio");
    for (name, frags, secs) in [
        (format!("{} commits", t.commits), t.fragments_before, t.read_before),
        (format!("{} commits, compacted", t.commits), t.fragments_after, t.read_after),
        ("1 commit".to_string(), 1, t.read_single_commit),
    ] {
        println!("{name:<34} {frags:>9} {:>10.1} {:>7.2}x", secs * 1e3, secs / t.read_single_commit);
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_export(args: BenchExportArgs) -> Result<ExitCode> {
    if let Some(dir) = &args.export_only {
        for format in &args.formats {
            let figure = crate::bench::export_figure(dir, format)?;
            println!("{}", serde_json::to_string(&figure)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    anyhow::ensure!(!args.rows.is_empty() && !args.rows.contains(&0), "--rows: give table sizes of at least 1 row");
    // Without --dir: a directory of this process's own, removed when done (or on an error).
    struct Removed(Option<PathBuf>);
    impl Drop for Removed {
        fn drop(&mut self) {
            if let Some(d) = &self.0 {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
    let temp = Removed(args.dir.is_none().then(|| std::env::temp_dir().join(format!("gemma-batch-bench-export-{}", std::process::id()))));
    let base = args.dir.clone().or_else(|| temp.0.clone()).expect("one of them");
    let exe = std::env::current_exe().context("finding this program")?;
    let mut figures: Vec<crate::bench::ExportFigure> = Vec::new();
    for &rows in &args.rows {
        let dir = base.join(format!("rows-{rows}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        eprintln!("writing a table of {rows} rows ({} rows a data file) in {}", args.rows_per_file, dir.display());
        crate::bench::write_results_table(&dir.join("results.lance").display().to_string(), rows, args.rows_per_file)?;
        // Each format in a process of its own: the peak is that export's.
        for format in &args.formats {
            let out = std::process::Command::new(&exe)
                .args(["bench", "export", "--formats", format, "--export-only"])
                .arg(&dir)
                .output()
                .context("running the export process")?;
            anyhow::ensure!(out.status.success(), "the export of {rows} rows failed: {}", String::from_utf8_lossy(&out.stderr));
            let text = String::from_utf8_lossy(&out.stdout);
            figures.push(serde_json::from_str(text.trim()).with_context(|| format!("reading the export figure {text:?}"))?);
        }
    }
    println!(
        "{:>10} {:>8} {:>9} {:>11} {:>15} {:>14} {:>10} {:>15} {:>10}",
        "rows", "format", "seconds", "MB written", "RSS before MiB", "peak RSS MiB", "vs first", "peak heap MiB", "vs first"
    );
    let mib = |k: Option<u64>| k.map(|k| format!("{:.1}", k as f64 / 1024.0)).unwrap_or_else(|| "n/a".into());
    let ratio = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if b > 0 => format!("{:.2}x", a as f64 / b as f64),
        _ => "n/a".into(),
    };
    for f in &figures {
        let first = figures.iter().find(|g| g.format == f.format).expect("f itself at least");
        println!(
            "{:>10} {:>8} {:>9.2} {:>11.1} {:>15} {:>14} {:>10} {:>15} {:>10}",
            f.rows,
            f.format,
            f.seconds,
            f.bytes as f64 / 1e6,
            mib(f.rss_before_kib),
            mib(f.peak_rss_kib),
            ratio(f.peak_rss_kib, first.peak_rss_kib),
            mib(f.peak_anon_kib),
            ratio(f.peak_anon_kib, first.peak_anon_kib)
        );
    }
    println!("peak RSS includes the program's own mapped code; peak heap is the anonymous memory (RssAnon), sampled");
    Ok(ExitCode::SUCCESS)
}

fn bench_prefill(args: BenchPrefillArgs) -> Result<ExitCode> {
    anyhow::ensure!(args.batch > 0 && args.tokens > 0, "--batch and --tokens must be at least 1");
    if let Some(mode) = &args.logits_only {
        let all = match mode.as_str() {
            "all" => true,
            "last" => false,
            other => anyhow::bail!("--logits-only {other:?}: last or all"),
        };
        let mut model = args.model.load()?;
        let figure = crate::bench::prefill_figure(&mut model, args.batch, args.tokens, all, args.repeats)?;
        println!("{}", serde_json::to_string(&figure)?);
        return Ok(ExitCode::SUCCESS);
    }
    let exe = std::env::current_exe().context("finding this program")?;
    let mut figures: Vec<crate::bench::PrefillFigure> = Vec::new();
    for mode in ["last", "all"] {
        eprintln!("prefill of {} x {} tokens, logits of {} positions", args.batch, args.tokens, if mode == "last" { "the last" } else { "all" });
        // Each mode in a process of its own: the peak is that mode's.
        let out = std::process::Command::new(&exe)
            .args(std::env::args_os().skip(1))
            .args(["--logits-only", mode])
            .output()
            .context("running the prefill process")?;
        anyhow::ensure!(out.status.success(), "the {mode} prefill failed: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        figures.push(serde_json::from_str(text.trim()).with_context(|| format!("reading the prefill figure {text:?}"))?);
    }
    let (last, all) = (&figures[0], &figures[1]);
    let mib = |k: Option<u64>| k.map(|k| format!("{:.0}", k as f64 / 1024.0)).unwrap_or_else(|| "n/a".into());
    println!("model {}: prefill of {} prompts x {} tokens, {}-entry vocabulary", args.model.model.display(), args.batch, args.tokens, last.vocab);
    println!("{:<16} {:>9} {:>22} {:>15} {:>13}", "logits", "seconds", "logits [b, pos, vocab]", "RSS before MiB", "peak RSS MiB");
    for f in &figures {
        println!(
            "{:<16} {:>9.3} {:>22} {:>15} {:>13}",
            if f.all_logits { "every position" } else { "last position" },
            f.seconds,
            format!("[{}, {}, {}]", f.batch, f.positions_per_row, f.vocab),
            mib(f.rss_before_kib),
            mib(f.peak_rss_kib)
        );
    }
    let full_mib = (args.batch * args.tokens * last.vocab * 4) as f64 / (1024.0 * 1024.0);
    println!(
        "last position / every position: {:.2} of the time ({:.1}x faster); a [{}, {}, {}] f32 logits tensor is {full_mib:.0} MiB",
        last.seconds / all.seconds,
        all.seconds / last.seconds,
        args.batch,
        args.tokens,
        last.vocab
    );
    if last.positions_per_row == last.tokens {
        println!("note: this decoder has no num_logits_to_keep input, so both modes compute every position's logits");
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_generate(args: BenchGenerateArgs) -> Result<ExitCode> {
    anyhow::ensure!(!args.batch.is_empty() && !args.batch.contains(&0), "--batch: give batch sizes of at least 1");
    let texts = match &args.prompts_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
        }
        None => crate::bench::generation_prompts(args.prompts, 20_261_130),
    };
    anyhow::ensure!(!texts.is_empty(), "no prompts to run");
    let mut model = args.model.load()?;
    let prompts = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            model
                .prepare(&crate::model::Request { prompt: t.clone(), ..Default::default() })
                .with_context(|| format!("prompt {} ({t:?})", i + 1))
        })
        .collect::<Result<Vec<_>>>()?;
    if args.ignore_eos {
        model.set_eos_ids(Vec::new());
    }
    let lens: Vec<usize> = prompts.iter().map(|p| p.input_ids.len()).collect();
    let info = model.backend_info().clone();
    println!(
        "model {} ({} on {}), {} prompts of {}..{} tokens (mean {:.1}), {} new tokens{}, greedy",
        args.model.model.display(),
        crate::util::enum_name(&info.backend),
        info.device,
        prompts.len(),
        lens.iter().min().unwrap_or(&0),
        lens.iter().max().unwrap_or(&0),
        lens.iter().sum::<usize>() as f64 / lens.len() as f64,
        args.new_tokens,
        if args.ignore_eos { " each (end tokens ignored)" } else { " at most" }
    );
    // Warm-up: first-run allocations and kernel selection are not throughput.
    let hidden = indicatif::ProgressBar::hidden();
    crate::bench::generation(&mut model, &prompts[..prompts.len().min(2)], 2, 2, &hidden)?;
    let mut runs = Vec::with_capacity(args.batch.len());
    for &batch in &args.batch {
        let bar = indicatif::ProgressBar::new(prompts.len() as u64).with_message(format!("batch {batch}"));
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} prompts {elapsed_precise}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        runs.push(crate::bench::generation(&mut model, &prompts, batch, args.new_tokens, &bar)?);
        bar.finish_and_clear();
    }
    println!("{:>6} {:>9} {:>8} {:>10} {:>9} {:>12}", "batch", "seconds", "tokens", "tokens/s", "items/s", "vs first");
    let base = runs[0].tokens_per_s;
    for r in &runs {
        println!(
            "{:>6} {:>9.2} {:>8} {:>10.1} {:>9.2} {:>11.2}x",
            r.batch, r.seconds, r.tokens, r.tokens_per_s, r.items_per_s, r.tokens_per_s / base
        );
    }
    let differ = runs.iter().skip(1).map(|r| r.outputs.iter().zip(&runs[0].outputs).filter(|(a, b)| a != b).count()).max().unwrap_or(0);
    println!(
        "outputs identical across batch sizes: {}",
        if differ == 0 { "yes".to_string() } else { format!("no ({differ} of {} prompts differ)", prompts.len()) }
    );
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "model": args.model.model,
            "backend": info.backend,
            "device": info.device,
            "new_tokens": args.new_tokens,
            "ignore_eos": args.ignore_eos,
            "threads": args.model.threads,
            "prompts": prompts.iter().map(|p| &p.input_ids).collect::<Vec<_>>(),
            "runs": runs,
        });
        let text = serde_json::to_string(&json)?;
        crate::sink::export::write_atomically(path, |f| {
            use std::io::Write;
            f.write_all(text.as_bytes()).map_err(|e| crate::Error::io(path, e))
        })
        .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(if differ == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn history(args: HistoryArgs) -> Result<ExitCode> {
    let spec = crate::spec::PipelineSpec::load(&args.spec)?;
    let h = crate::pipeline::history(&spec)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&h)?);
        return Ok(ExitCode::SUCCESS);
    }
    let runs: std::collections::HashMap<&str, &crate::sink::history::RunInfo> = h.runs.iter().map(|r| (r.run_id.as_str(), r)).collect();
    let time = |ms: i64| {
        arrow_array::temporal_conversions::as_datetime::<arrow_array::types::TimestampMillisecondType>(ms)
            .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| ms.to_string())
    };
    let count = |r: &crate::sink::history::RunInfo, k: &str| r.summary.get(k).and_then(|v| v.as_u64()).map_or("-".to_string(), |v| v.to_string());
    println!("{}: {} versions, {} runs", h.table, h.versions.len(), h.runs.len());
    println!("{:>7}  {:<19}  {:<9}  {:>8}  {:>5}  {:<16}  {:>6}  {:>6}  {:>7}  {:<16}  tags", "version", "time (UTC)", "operation", "rows", "frags", "run", "done", "failed", "skipped", "spec");
    for v in &h.versions {
        let opt = |x: Option<u64>| x.map_or("-".to_string(), |x| x.to_string());
        let run = v.run_id.as_deref().and_then(|id| runs.get(id));
        let (id, done, failed, skipped, spec_hash) = match run {
            Some(r) => (r.run_id.clone(), count(r, "done"), count(r, "failed"), count(r, "skipped"), r.spec_hash.clone()),
            None if v.version == 1 => ("(created)".into(), "-".into(), "-".into(), "-".into(), "-".into()),
            None => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:>7}  {:<19}  {:<9}  {:>8}  {:>5}  {:<16}  {:>6}  {:>6}  {:>7}  {:<16}  {}",
            v.version, time(v.timestamp_ms), v.operation.as_deref().unwrap_or("-"), opt(v.rows), opt(v.fragments), id, done, failed, skipped, spec_hash, v.tags.join(",")
        );
    }
    // Runs that wrote no version (everything was done already) are history too.
    let silent: Vec<&crate::sink::history::RunInfo> = h.runs.iter().filter(|r| !h.versions.iter().any(|v| v.run_id.as_deref() == Some(r.run_id.as_str()))).collect();
    if !silent.is_empty() {
        println!("\nruns that wrote no version (nothing new, a shard, or versions since removed):");
        for r in silent {
            println!("  {}  {}  {}  done {} failed {} skipped {}  spec {}", time(r.started_ms), r.run_id, r.name, count(r, "done"), count(r, "failed"), count(r, "skipped"), r.spec_hash);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn compact(args: CompactArgs) -> Result<ExitCode> {
    use crate::sink::history::Retention;
    let spec = crate::spec::PipelineSpec::load(&args.spec)?;
    let retention = match (args.keep_versions, args.older_than, args.keep_all) {
        (Some(n), _, _) => Retention::Versions(n),
        (_, _, true) => Retention::All,
        (_, Some(days), _) => {
            anyhow::ensure!(days.is_finite() && days >= 0.0, "--older-than {days}: give a number of days, 0 or more");
            Retention::Days(days)
        }
        (None, None, false) => Retention::Days(7.0),
    };
    for t in crate::pipeline::compact(&spec, retention, args.wait)? {
        println!(
            "{}: fragments {} -> {}, versions {} -> {} ({} removed, {:.1} MB freed)",
            t.table, t.fragments_before, t.fragments_after, t.versions_before, t.versions_after, t.versions_removed, t.bytes_removed as f64 / 1e6
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_gate(s: &str) -> Result<(String, crate::evals::suite::GateSpec)> {
    let (name, rule) = s.split_once('=').with_context(|| format!("gate {s:?}: expected NAME=KIND:X"))?;
    let (kind, value) = rule.split_once(':').with_context(|| format!("gate {s:?}: expected KIND:X after ="))?;
    let v: f64 = value.parse().with_context(|| format!("gate {s:?}: {value:?} is not a number"))?;
    let mut g = crate::evals::suite::GateSpec { min: None, max: None, max_abs: None };
    match kind {
        "min" => g.min = Some(v),
        "max" => g.max = Some(v),
        "max_abs" => g.max_abs = Some(v),
        other => anyhow::bail!("gate {s:?}: kind {other:?} is not min, max or max_abs"),
    }
    g.check().map_err(|m| anyhow::anyhow!("gate {s:?}: {m}"))?;
    Ok((name.to_string(), g))
}

fn write_reports(record: &crate::evals::record::EvalRecord, dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let html = crate::reports::html(record).map_err(anyhow::Error::msg).context("rendering report.html")?;
    for (name, text) in [
        ("record.json", serde_json::to_string_pretty(record)?),
        ("report.html", html),
        ("report.md", crate::reports::markdown(record)),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn eval(args: EvalArgs) -> Result<ExitCode> {
    let mut suite = crate::evals::suite::SuiteSpec::load(&args.suite)?;
    add_gates(&mut suite, &args.gates)?;
    let options = crate::pipeline::RunOptions { quiet: args.quiet, ..Default::default() };
    let outputs = crate::evals::suite::Outputs::Generate(options);
    let evaluation = crate::evals::suite::run(&suite, &outputs).with_context(|| format!("running {}", args.suite.display()))?;
    let dir = args.out.clone().unwrap_or_else(|| suite.reports_dir());
    finish_evaluation(&evaluation, &dir, false)
}

fn score(args: ScoreArgs) -> Result<ExitCode> {
    use crate::evals::suite::Outputs;
    let mut suite = crate::evals::suite::SuiteSpec::load(&args.suite)?;
    add_gates(&mut suite, &args.gates)?;
    let (outputs, default_out) = match (&args.predictions, &args.results) {
        (Some(file), _) => {
            let p = crate::evals::predictions::Predictions::load(file, &args.id_column, &args.prediction_column)?;
            let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "predictions".into());
            (Outputs::Predictions(p), file.with_file_name(format!("{stem}-report")))
        }
        (None, Some(dir)) => {
            anyhow::ensure!(dir.is_dir(), "--results {}: not a directory", dir.display());
            (Outputs::Results(std::path::absolute(dir)?), dir.join("rescored"))
        }
        (None, None) => unreachable!("clap requires one"),
    };
    let evaluation = crate::evals::suite::run(&suite, &outputs).with_context(|| format!("scoring {}", args.suite.display()))?;
    finish_evaluation(&evaluation, &args.out.unwrap_or(default_out), args.allow_missing)
}

fn add_gates(suite: &mut crate::evals::suite::SuiteSpec, gates: &[String]) -> Result<()> {
    for g in gates {
        let (name, spec) = parse_gate(g)?;
        suite.gates.insert(name, spec);
    }
    Ok(())
}

/// Writes the reports and the scored outputs, prints the summary, and turns failed gates and
/// (unless allowed) items without an output into exit status 1.
fn finish_evaluation(evaluation: &crate::evals::suite::Evaluation, dir: &std::path::Path, allow_missing: bool) -> Result<ExitCode> {
    let record = &evaluation.record;
    write_reports(record, dir)?;
    let path = dir.join("predictions.jsonl");
    let mut text = String::new();
    for row in &evaluation.outputs {
        text.push_str(&serde_json::to_string(row)?);
        text.push('\n');
    }
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    print!("{}", crate::reports::markdown(record));
    println!("\nreports: {} (report.html, report.md, record.json, predictions.jsonl)", dir.display());
    let mut ok = true;
    for g in record.failed_gates() {
        ok = false;
        let value = g.value.map(|v| v.to_string()).unwrap_or_else(|| "missing".into());
        match &g.problem {
            Some(p) => eprintln!("gate failed: {} {} {} (value {value}: {p})", g.name, g.kind, g.threshold),
            None => eprintln!("gate failed: {} {} {} (value {value})", g.name, g.kind, g.threshold),
        }
    }
    for m in &record.missing {
        let shown: Vec<&str> = m.ids.iter().take(5).map(String::as_str).collect();
        let more = if m.ids.len() > shown.len() { format!(" and {} more", m.ids.len() - shown.len()) } else { String::new() };
        eprintln!("no output: {} of {} items of {} ({}{more}; all listed in record.json)", m.ids.len(), m.expected, m.part, shown.join(", "));
        ok &= allow_missing;
    }
    if !record.unmatched_predictions.is_empty() {
        eprintln!("warning: {} predictions match no item of the suite (listed in record.json)", record.unmatched_predictions.len());
    }
    for u in &record.unreadable_predictions {
        eprintln!("warning: unreadable prediction row: {u}");
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn load_record(p: &std::path::Path) -> Result<crate::evals::record::EvalRecord> {
    let file = if p.is_dir() { p.join("record.json") } else { p.to_path_buf() };
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not an evaluation record", file.display()))
}

fn report(args: ReportArgs) -> Result<ExitCode> {
    if let Some(pair) = &args.compare {
        let (a, b) = (load_record(&pair[0])?, load_record(&pair[1])?);
        // A baseline without metrics would pass any B.
        anyhow::ensure!(!a.metrics.is_empty(), "nothing to compare: {} has no metrics", pair[0].display());
        let deltas = crate::evals::record::compare(&a, &b);
        let text = crate::reports::compare_markdown(&a, &b, &deltas);
        print!("{text}");
        if let Some(out) = &args.out {
            std::fs::create_dir_all(out)?;
            std::fs::write(out.join("compare.md"), &text)?;
        }
        let regressions: Vec<_> = deltas.iter().filter(|d| d.regression).collect();
        for d in &regressions {
            match (&d.problem, d.b) {
                (Some(p), _) => eprintln!("regression: {}.{} {p}", d.benchmark, d.metric),
                (None, b) => eprintln!("regression: {}.{} {:.4} -> {:.4}", d.benchmark, d.metric, d.a.value, b.map_or(f64::NAN, |b| b.value)),
            }
        }
        return Ok(if regressions.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }
    let path = args.record.expect("required unless --compare");
    let record = load_record(&path)?;
    let dir = args.out.unwrap_or_else(|| if path.is_dir() { path.clone() } else { path.parent().map(PathBuf::from).unwrap_or_default() });
    write_reports(&record, &dir)?;
    println!("reports: {}", dir.display());
    Ok(ExitCode::SUCCESS)
}
