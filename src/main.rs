//! The `qwenrt` binary: see `qwenrt --help`. The commands are in [`cmd`]; the library
//! (`qwenrt`) has the engine, the model hub and the workloads they run.

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
