fn main() -> std::process::ExitCode {
    // `hark trigger`'s job spawner is this binary exec'd again (src/jobs/spawner.rs).
    if let Some(code) = hark::jobs::spawner::main_if_spawner() {
        return code;
    }
    hark::cli::main()
}
