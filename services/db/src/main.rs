//! The `quartet-db` binary: configuration and process life from `quartet-kit`, the work in the lib.

fn main() -> std::process::ExitCode {
    quartet_kit::app::main(quartet_db::SERVICE, quartet_db::ABOUT, quartet_db::run)
}
