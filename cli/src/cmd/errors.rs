//! clap's errors as one `error:` line that names the flag, in the words the command line has
//! always used ("unknown flag --bogus for `qwenrt generate`", "flag --ctx needs a value",
//! "invalid value \"many\" for --ctx in `qwenrt info`: ..."). `--help` and `--version` print
//! and succeed.

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::CommandFactory;

use super::{Cli, CliError};

/// What clap's error `e` on `args` (the program name first) becomes.
pub fn from_clap(e: clap::Error, args: &[String]) -> Result<(), CliError> {
    let sub = args
        .get(1)
        .filter(|s| Cli::command().find_subcommand(s.as_str()).is_some())
        .map(String::as_str);
    let cmd = match sub {
        Some(s) => format!("`qwenrt {s}`"),
        None => "`qwenrt`".to_string(),
    };
    let help = match sub {
        Some(s) => format!("qwenrt {s} --help"),
        None => "qwenrt --help".to_string(),
    };
    let arg = context(&e, ContextKind::InvalidArg).map(|a| flag_name(&a, sub, args));
    let value = context(&e, ContextKind::InvalidValue);
    let message = match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            return Ok(());
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            let mut c = Cli::command();
            let c = match sub {
                Some(s) => c
                    .find_subcommand_mut(s)
                    .expect("a known subcommand")
                    .clone(),
                None => c,
            };
            let mut c = c;
            return Err(CliError::usage(format!(
                "no command given (see {help})\n\n{}",
                c.render_help().to_string().trim_end()
            )));
        }
        ErrorKind::InvalidSubcommand => {
            let name = context(&e, ContextKind::InvalidSubcommand).unwrap_or_default();
            format!("unknown command {name:?} (see qwenrt --help)")
        }
        ErrorKind::UnknownArgument => {
            let a = arg.unwrap_or_default();
            if a.starts_with('-') && a.len() > 1 {
                let a = a.split('=').next().unwrap_or(&a).to_string();
                let hint = match context(&e, ContextKind::SuggestedArg) {
                    Some(s) => format!("; did you mean {}?", s.split(' ').next().unwrap_or(&s)),
                    None => String::new(),
                };
                format!("unknown flag {a} for {cmd} (see {help}){hint}")
            } else {
                format!("unexpected argument {a:?} for {cmd}")
            }
        }
        ErrorKind::InvalidValue if value.as_deref().is_none_or(str::is_empty) => {
            format!("flag {} needs a value", arg.unwrap_or_default())
        }
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => {
            let mut m = format!(
                "invalid value {:?} for {} in {cmd}",
                value.unwrap_or_default(),
                arg.unwrap_or_default()
            );
            if let Some(ContextValue::Strings(valid)) = e.get(ContextKind::ValidValue) {
                m.push_str(&format!(" (expected one of: {})", valid.join(", ")));
            } else if let Some(valid) = context(&e, ContextKind::ValidValue) {
                m.push_str(&format!(" (expected one of: {valid})"));
            } else if let Some(source) = std::error::Error::source(&e) {
                m.push_str(&format!(": {source}"));
            }
            m
        }
        ErrorKind::ArgumentConflict => {
            let prior = context(&e, ContextKind::PriorArg).map(|a| flag_name(&a, sub, args));
            match (arg, prior) {
                (Some(a), Some(p)) if a == p => format!("flag {a} given more than once"),
                (Some(a), Some(p)) => format!("{a} and {p} exclude each other"),
                (Some(a), None) => format!("flag {a} given more than once"),
                _ => first_line(&e),
            }
        }
        ErrorKind::NoEquals | ErrorKind::TooManyValues if arg.is_some() => {
            format!("flag {} takes no value", arg.unwrap_or_default())
        }
        ErrorKind::MissingRequiredArgument => {
            let missing = match e.get(ContextKind::InvalidArg) {
                Some(ContextValue::Strings(v)) => v
                    .iter()
                    .map(|a| a.replace(['<', '>'], ""))
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => arg.unwrap_or_default(),
            };
            format!("{} needs {missing} (see {help})", sub.unwrap_or("qwenrt"))
        }
        _ => first_line(&e),
    };
    Err(CliError::usage(message))
}

/// One context value of `e` as text (the first of a list).
fn context(e: &clap::Error, kind: ContextKind) -> Option<String> {
    match e.get(kind)? {
        ContextValue::String(s) => Some(s.clone()),
        ContextValue::Strings(v) => v.first().cloned(),
        ContextValue::StyledStr(s) => Some(s.to_string()),
        ContextValue::StyledStrs(v) => v.first().map(|s| s.to_string()),
        ContextValue::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The flag clap names as `--long <VALUE>` (or `<POSITIONAL>`), as the user wrote it: `-p`
/// when `args` used the short form and not the long one.
fn flag_name(clap_arg: &str, sub: Option<&str>, args: &[String]) -> String {
    let name = clap_arg.split(' ').next().unwrap_or(clap_arg);
    if !name.starts_with('-') {
        return name.replace(['<', '>'], "");
    }
    let Some(long) = name.strip_prefix("--") else {
        return name.to_string();
    };
    let short = sub
        .and_then(|s| {
            Cli::command()
                .find_subcommand(s)?
                .get_arguments()
                .find(|a| a.get_long() == Some(long))?
                .get_short()
        })
        .map(|c| format!("-{c}"));
    let used = |prefix: &str| {
        args.iter()
            .skip(2)
            .any(|a| a == prefix || a.starts_with(&format!("{prefix}=")))
    };
    match short {
        Some(s) if used(&s) && !used(name) => s,
        _ => name.to_string(),
    }
}

/// clap's own message, first line, without its `error: ` prefix.
fn first_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or("invalid command line");
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}
