//! The `quartet-auth` binary: configuration and process life from `quartet-kit`, the work in the lib.

fn main() -> std::process::ExitCode {
    quartet_kit::app::main(
        quartet_auth::SERVICE,
        quartet_auth::ABOUT,
        quartet_auth::run,
    )
}
