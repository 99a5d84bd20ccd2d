//! The `quartet-rpc-gateway` binary: configuration and process life from `quartet-kit`, the work in the lib.

fn main() -> std::process::ExitCode {
    quartet_kit::app::main(
        quartet_rpc_gateway::SERVICE,
        quartet_rpc_gateway::ABOUT,
        quartet_rpc_gateway::run,
    )
}
