//! Secrets in the configuration: written inline, or read from a file, an environment
//! variable or a systemd credential (`LoadCredential=`, read from `$CREDENTIALS_DIRECTORY`),
//! so a config file can be world-readable while the keys are not.
//!
//! In TOML a secret is a string (inline) or a table with exactly one of `file`, `env`,
//! `credential`. [`super::Config::load`] resolves every secret once (and again on each
//! reload); afterwards [`Secret::expose`] gives the value whatever its source.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Largest secret file or credential read, in bytes: a secret is a key or a URL, and the
/// bound keeps a mistaken path (a device, a log) from being read whole.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// A secret value and where it comes from. `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret {
    source: Source,
    value: String,
}

/// Where a secret is read from.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
enum Source {
    #[default]
    Inline,
    File(PathBuf),
    Env(String),
    Credential(String),
}

impl Secret {
    /// A secret written inline.
    #[must_use]
    pub fn inline(value: impl Into<String>) -> Secret {
        Secret {
            source: Source::Inline,
            value: value.into(),
        }
    }

    /// The value (after [`super::Config::load`] resolved it).
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Whether the secret is written inline and empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.source == Source::Inline && self.value.is_empty()
    }

    /// Reads the value from its source. `env` holds the process environment (with
    /// `CREDENTIALS_DIRECTORY` when systemd set it).
    pub(super) fn resolve(&mut self, env: &HashMap<String, String>) -> Result<(), String> {
        self.value = match &self.source {
            Source::Inline => return Ok(()),
            Source::Env(name) => env
                .get(name)
                .cloned()
                .ok_or_else(|| format!("the environment variable {name} is not set"))?,
            Source::File(path) => read_bounded(path)?,
            Source::Credential(name) => {
                let dir = env.get("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    format!(
                        "credential {name:?}: $CREDENTIALS_DIRECTORY is not set \
                         (systemd sets it for a unit with LoadCredential=)"
                    )
                })?;
                read_bounded(&Path::new(dir).join(name))?
            }
        };
        Ok(())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Source::Inline if self.value.is_empty() => f.write_str("\"\""),
            Source::Inline => f.write_str("<redacted>"),
            Source::File(path) => write!(f, "<from file {}>", path.display()),
            Source::Env(name) => write!(f, "<from ${name}>"),
            Source::Credential(name) => write!(f, "<from credential {name}>"),
        }
    }
}

/// A secret file's text without its trailing line break.
fn read_bounded(path: &Path) -> Result<String, String> {
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    // Checked before opening: opening a FIFO would wait for a writer.
    if !std::fs::metadata(path).map_err(|e| fail(&e))?.is_file() {
        return Err(fail(&"not a regular file"));
    }
    let file = std::fs::File::open(path).map_err(|e| fail(&e))?;
    let mut text = String::new();
    file.take(MAX_SECRET_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| fail(&e))?;
    if text.len() as u64 > MAX_SECRET_FILE {
        return Err(fail(&format!("larger than {MAX_SECRET_FILE} bytes")));
    }
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            file: Option<PathBuf>,
            env: Option<String>,
            credential: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Inline(String),
            Table(Table),
        }
        use serde::de::Error as _;
        let source = match Form::deserialize(deserializer).map_err(|_| {
            D::Error::custom(
                "a secret is a string, or a table with one of file = \"PATH\", \
                 env = \"VARIABLE\", credential = \"NAME\"",
            )
        })? {
            Form::Inline(value) => return Ok(Secret::inline(value)),
            Form::Table(Table {
                file: Some(path),
                env: None,
                credential: None,
            }) => Source::File(path),
            Form::Table(Table {
                file: None,
                env: Some(name),
                credential: None,
            }) if !name.is_empty() => Source::Env(name),
            Form::Table(Table {
                file: None,
                env: None,
                credential: Some(name),
            }) if is_file_name(&name) => Source::Credential(name),
            Form::Table(_) => {
                return Err(D::Error::custom(
                    "a secret table names exactly one of file, env, credential \
                     (a credential is a file name, without '/')",
                ));
            }
        };
        Ok(Secret {
            source,
            value: String::new(),
        })
    }
}

fn is_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Holder {
        s: Secret,
    }

    fn parse(text: &str) -> Result<Secret, String> {
        toml::from_str::<Holder>(text)
            .map(|h| h.s)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn every_source_resolves_to_its_value() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "from-a-file\n").unwrap();
        std::fs::write(dir.path().join("cred"), "from-a-credential").unwrap();
        let env: HashMap<String, String> = [
            ("TOKEN_KEY".to_owned(), "from-the-env".to_owned()),
            (
                "CREDENTIALS_DIRECTORY".to_owned(),
                dir.path().display().to_string(),
            ),
        ]
        .into();
        let file = format!("s = {{ file = {:?} }}", dir.path().join("key"));
        for (text, value) in [
            ("s = \"inline\"", "inline"),
            (file.as_str(), "from-a-file"),
            ("s = { env = \"TOKEN_KEY\" }", "from-the-env"),
            ("s = { credential = \"cred\" }", "from-a-credential"),
        ] {
            let mut secret = parse(text).unwrap();
            secret.resolve(&env).unwrap();
            assert_eq!(secret.expose(), value, "{text}");
            assert!(
                !format!("{secret:?}").contains(value),
                "{text}: Debug shows it"
            );
        }
    }

    #[test]
    fn a_missing_source_is_an_error_that_names_it() {
        let none = HashMap::new();
        let mut env = parse("s = { env = \"NOPE\" }").unwrap();
        assert!(env.resolve(&none).unwrap_err().contains("NOPE"));
        let mut cred = parse("s = { credential = \"k\" }").unwrap();
        assert!(
            cred.resolve(&none)
                .unwrap_err()
                .contains("CREDENTIALS_DIRECTORY")
        );
        let mut file = parse("s = { file = \"/nonexistent/secret\" }").unwrap();
        assert!(
            file.resolve(&none)
                .unwrap_err()
                .contains("/nonexistent/secret")
        );
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let mut pipe = parse(&format!("s = {{ file = {fifo:?} }}")).unwrap();
        assert!(
            pipe.resolve(&none)
                .unwrap_err()
                .contains("not a regular file")
        );
        let mut device = parse("s = { file = \"/dev/zero\" }").unwrap();
        assert!(
            device
                .resolve(&none)
                .unwrap_err()
                .contains("not a regular file")
        );
    }

    #[test]
    fn a_huge_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(
            &path,
            vec![b'a'; usize::try_from(MAX_SECRET_FILE).unwrap() + 1],
        )
        .unwrap();
        let mut secret = parse(&format!("s = {{ file = {path:?} }}")).unwrap();
        assert!(
            secret
                .resolve(&HashMap::new())
                .unwrap_err()
                .contains("larger")
        );
    }

    #[test]
    fn ambiguous_or_odd_tables_are_refused() {
        for text in [
            "s = { file = \"a\", env = \"B\" }",
            "s = {}",
            "s = { credential = \"../x\" }",
            "s = { path = \"a\" }",
            "s = 5",
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
    }
}
