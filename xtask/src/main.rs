//! `cargo xtask`: the CLI lives in the library ([`kraft_xtask::main`]).

fn main() -> std::process::ExitCode {
    kraft_xtask::main()
}
