//! The one piece of flag parsing the subcommands share: each subcommand
//! matches its own flags, and every flag that takes a value reads and
//! parses it here, so a missing or bad value is reported the same way
//! everywhere.

use std::fmt::Display;
use std::str::FromStr;

/// The value given after `flag` (`raw`: the next argument, if any), parsed
/// as `T`. Errors name the flag: `--n needs a value`, `--n: invalid digit
/// found in string`.
pub fn value<T>(flag: &str, raw: Option<&String>) -> Result<T, String>
where
    T: FromStr,
    T::Err: Display,
{
    let raw = raw.ok_or_else(|| format!("{flag} needs a value"))?;
    raw.parse().map_err(|e| format!("{flag}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::value;
    use std::path::PathBuf;

    #[test]
    fn parses_or_names_the_flag() {
        assert_eq!(value::<u64>("--n", Some(&"42".to_string())), Ok(42));
        assert_eq!(
            value::<PathBuf>("--dir", Some(&"/tmp/x".to_string())),
            Ok(PathBuf::from("/tmp/x"))
        );
        assert_eq!(
            value::<u64>("--n", None),
            Err("--n needs a value".to_string())
        );
        assert_eq!(
            value::<f64>("--secs", Some(&"x".to_string())),
            Err("--secs: invalid float literal".to_string())
        );
    }
}
