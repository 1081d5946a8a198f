//! The `qwenrt` binary: see `qwenrt --help`.

fn main() {
    let mut args = Vec::new();
    for a in std::env::args_os().skip(1) {
        match a.into_string() {
            Ok(s) => args.push(s),
            Err(a) => {
                eprintln!("error: argument {a:?} is not valid UTF-8");
                std::process::exit(2);
            }
        }
    }
    if let Err(e) = qwenrt::cli::run(&args) {
        eprintln!("error: {e}");
        std::process::exit(if e.usage { 2 } else { 1 });
    }
}
