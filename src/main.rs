fn main() -> std::process::ExitCode {
    gemma_batch::cli::main()
}
