//! The `qwenrt` binary: see `qwenrt --help`. The commands are in [`cmd`]; the engine is the
//! `qwenrt` library, the server `qwenrt-server`, and the model hub, the workloads and the load
//! generator the commands run are this package's library (`qwenrt_cli`).

mod cmd;

fn main() {
    let mut args = Vec::new();
    for a in std::env::args_os() {
        match a.into_string() {
            Ok(s) => args.push(s),
            Err(a) => {
                eprintln!("error: argument {a:?} is not valid UTF-8");
                std::process::exit(2);
            }
        }
    }
    if let Err(e) = cmd::run(&args) {
        eprintln!("error: {e}");
        std::process::exit(if e.usage { 2 } else { 1 });
    }
}
