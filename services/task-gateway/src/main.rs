//! The `quartet-task-gateway` binary: configuration and process life from `quartet-kit`, the work in the lib.

fn main() -> std::process::ExitCode {
    quartet_kit::app::main(
        quartet_task_gateway::SERVICE,
        quartet_task_gateway::ABOUT,
        quartet_task_gateway::run,
    )
}
