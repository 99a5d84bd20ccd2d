//! The `quartet-operator` binary: configuration and process life from `quartet-kit`.

fn main() -> std::process::ExitCode {
    quartet_kit::app::main(
        quartet_operator::SERVICE,
        quartet_operator::ABOUT,
        quartet_operator::run,
    )
}
