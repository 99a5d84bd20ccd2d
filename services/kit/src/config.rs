//! Layered, typed configuration.
//!
//! A service describes its configuration once, as a Rust struct that derives `Serialize`,
//! `Deserialize`, `JsonSchema` and `Default`, with a doc comment on every field. From that one
//! description this module derives everything else:
//!
//! * the **knobs**: every leaf field, addressed by its dotted key (`admin.listen`), its flag
//!   (`--admin-listen`) and its environment variable (`QUARTET_AUTH_ADMIN_LISTEN`);
//! * the `--help` text and a Markdown reference (`--config-reference`), from the doc comments;
//! * the checks: unknown keys (in the file or in `QUARTET_<SERVICE>_*` variables) are rejected,
//!   and every bad value is reported at once, each naming its key and where it came from.
//!
//! Precedence, lowest to highest: the service's defaults, the TOML file given by `--config`
//! (or `QUARTET_<SERVICE>_CONFIG`), environment variables, command-line flags.
//!
//! The loader takes the arguments and the environment as inputs, so tests never touch the
//! process environment.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Where a configuration value came from; named in every error so users know what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The service's built-in default.
    Default,
    /// A key in the TOML file at this path.
    File(PathBuf),
    /// The named environment variable.
    Env(String),
    /// The named command-line flag.
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Env(name) => write!(f, "env {name}"),
            Source::Flag(name) => write!(f, "flag --{name}"),
        }
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The dotted key (`admin.listen`), or the variable/flag name when no key matches it.
    pub key: String,
    /// Where the offending value came from.
    pub source: Source,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.key, self.source, self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// One or more values are wrong; all of them are listed.
    #[error("invalid configuration for {service}: {}", list(.problems))]
    Invalid {
        /// The binary whose configuration failed.
        service: String,
        /// Every problem found, in key order.
        problems: Vec<Problem>,
    },
    /// The command line itself could not be parsed, or `--help`/`--version` was asked for;
    /// `clap` renders it (and exits 0 for help).
    #[error(transparent)]
    Cli(#[from] clap::Error),
}

fn list(problems: &[Problem]) -> String {
    let mut out = format!("{} problem(s)", problems.len());
    for p in problems {
        out.push_str("\n  - ");
        out.push_str(&p.to_string());
    }
    out
}

/// What the command line asked for besides the configuration itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run the service.
    Run,
    /// Print the effective configuration as TOML and exit.
    PrintConfig,
    /// Print the Markdown reference of every knob and exit.
    PrintReference,
}

/// A loaded configuration and what to do with it.
#[derive(Debug)]
pub struct Loaded<T> {
    /// The validated configuration.
    pub config: T,
    /// What the command line asked for.
    pub action: Action,
    /// Where each key that is not a default came from.
    pub sources: BTreeMap<String, Source>,
}

/// The shape of a leaf value, as far as strings from flags and environment must be converted.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    String,
    Integer,
    Number,
    Boolean,
    Array(Box<Kind>),
    /// A table or anything richer: given as an inline TOML value.
    Inline,
}

impl Kind {
    fn placeholder(&self) -> &'static str {
        match self {
            Kind::String => "STRING",
            Kind::Integer => "INT",
            Kind::Number => "NUMBER",
            Kind::Boolean => "BOOL",
            Kind::Array(_) => "LIST",
            Kind::Inline => "TOML",
        }
    }
}

/// One leaf setting of a configuration.
#[derive(Debug, Clone)]
pub struct Knob {
    /// Path from the root, one element per table.
    pub path: Vec<String>,
    /// The field's doc comment.
    pub doc: String,
    /// The environment variable that sets it.
    pub env: String,
    /// The flag (without `--`) that sets it.
    pub flag: String,
    kind: Kind,
    choices: Vec<String>,
}

impl Knob {
    /// The dotted key, as written in the TOML file.
    pub fn key(&self) -> String {
        self.path.join(".")
    }
}

/// Loads configurations of type `T` for one service.
#[derive(Debug, Clone)]
pub struct Loader {
    binary: String,
    env_prefix: String,
    about: String,
}

impl Loader {
    /// A loader for `binary` (e.g. `quartet-task-gateway`), whose environment variables start
    /// with `QUARTET_<ROLE>_` where the role is the binary name without `quartet-`.
    pub fn new(binary: &str, about: &str) -> Self {
        let role = binary.strip_prefix("quartet-").unwrap_or(binary);
        Self {
            binary: binary.to_owned(),
            env_prefix: format!("QUARTET_{}_", role.to_uppercase().replace('-', "_")),
            about: about.to_owned(),
        }
    }

    /// The environment variable naming the configuration file.
    pub fn config_env(&self) -> String {
        format!("{}CONFIG", self.env_prefix)
    }

    /// Every knob of `T`, in key order.
    pub fn knobs<T: JsonSchema>(&self) -> Vec<Knob> {
        let schema = schemars::schema_for!(T);
        let root = schema.as_value();
        let mut knobs = Vec::new();
        walk(root, root, &mut Vec::new(), None, &mut knobs);
        for knob in &mut knobs {
            knob.env = format!("{}{}", self.env_prefix, knob.path.join("_").to_uppercase());
            knob.flag = knob.path.join("-").replace('_', "-");
        }
        knobs.sort_by_key(|k| k.key());
        knobs
    }

    fn command(&self, knobs: &[Knob]) -> Command {
        let mut cmd = Command::new(self.binary.clone())
            .about(self.about.clone())
            .version(env!("CARGO_PKG_VERSION"))
            .after_help(format!(
                "Precedence, lowest first: defaults, the --config file, QUARTET_* environment \
                 variables, flags. Unknown keys and variables are errors. \
                 `{} --config-reference` lists every key.",
                self.binary
            ))
            .arg(
                Arg::new("config")
                    .long("config")
                    .short('c')
                    .value_name("FILE")
                    .help(format!(
                        "TOML configuration file [env: {}]",
                        self.config_env()
                    )),
            )
            .arg(
                Arg::new("print-config")
                    .long("print-config")
                    .action(ArgAction::SetTrue)
                    .help("Print the effective configuration as TOML and exit"),
            )
            .arg(
                Arg::new("config-reference")
                    .long("config-reference")
                    .action(ArgAction::SetTrue)
                    .help("Print a Markdown table of every configuration key and exit"),
            );
        for knob in knobs {
            let mut help = knob.doc.split_whitespace().collect::<Vec<_>>().join(" ");
            if !knob.choices.is_empty() {
                help.push_str(&format!(" [one of: {}]", knob.choices.join(", ")));
            }
            help.push_str(&format!(" [env: {}]", knob.env));
            let mut arg = Arg::new(knob.flag.clone())
                .long(knob.flag.clone())
                .value_name(knob.kind.placeholder())
                .help(help);
            if matches!(knob.kind, Kind::Array(_)) {
                arg = arg.action(ArgAction::Append);
            }
            cmd = cmd.arg(arg);
        }
        cmd
    }

    /// Parses `args` (including the program name) and `env` into a validated `T`.
    ///
    /// Every problem is collected before returning, so one run names all of them.
    pub fn load<T, I, S, E>(&self, args: I, env: E) -> Result<Loaded<T>, ConfigError>
    where
        T: Serialize + DeserializeOwned + JsonSchema + Default,
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
        E: IntoIterator<Item = (String, String)>,
    {
        let knobs = self.knobs::<T>();
        let matches = self.command(&knobs).try_get_matches_from(args)?;
        let action = if matches.get_flag("config-reference") {
            Action::PrintReference
        } else if matches.get_flag("print-config") {
            Action::PrintConfig
        } else {
            Action::Run
        };
        let env: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&self.env_prefix))
            .collect();

        let mut problems = Vec::new();
        // Each user-supplied leaf: key -> (value, source). Later layers overwrite earlier ones.
        let mut given: BTreeMap<String, (Value, Source)> = BTreeMap::new();

        let config_env = self.config_env();
        let file = matches
            .get_one::<String>("config")
            .map(PathBuf::from)
            .or_else(|| env.get(&config_env).map(PathBuf::from));
        if let Some(path) = &file {
            match read_file(path) {
                Ok(table) => {
                    let schema = schemars::schema_for!(T);
                    let root = schema.as_value();
                    flatten_file(
                        root,
                        root,
                        &table,
                        &mut Vec::new(),
                        path,
                        &knobs,
                        &mut given,
                        &mut problems,
                    );
                }
                Err(message) => problems.push(Problem {
                    key: "config".into(),
                    source: Source::File(path.clone()),
                    message,
                }),
            }
        }

        let by_env: BTreeMap<&str, &Knob> = knobs.iter().map(|k| (k.env.as_str(), k)).collect();
        for (name, raw) in &env {
            if *name == config_env {
                continue;
            }
            match by_env.get(name.as_str()) {
                Some(knob) => match coerce(&knob.kind, raw, true) {
                    Ok(v) => {
                        given.insert(knob.key(), (v, Source::Env(name.clone())));
                    }
                    Err(message) => problems.push(Problem {
                        key: knob.key(),
                        source: Source::Env(name.clone()),
                        message,
                    }),
                },
                None => problems.push(Problem {
                    key: name.clone(),
                    source: Source::Env(name.clone()),
                    message: format!(
                        "unknown environment variable: no setting is called that{}",
                        suggest(name, knobs.iter().map(|k| k.env.as_str()))
                    ),
                }),
            }
        }

        for knob in &knobs {
            if matches.value_source(&knob.flag) != Some(clap::parser::ValueSource::CommandLine) {
                continue;
            }
            let raws: Vec<&String> = matches
                .get_many::<String>(&knob.flag)
                .into_iter()
                .flatten()
                .collect();
            let raw = raws
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(",");
            match coerce(&knob.kind, &raw, true) {
                Ok(v) => {
                    given.insert(knob.key(), (v, Source::Flag(knob.flag.clone())));
                }
                Err(message) => problems.push(Problem {
                    key: knob.key(),
                    source: Source::Flag(knob.flag.clone()),
                    message,
                }),
            }
        }

        // Check each given value on its own against the defaults, so one bad value cannot hide
        // another; then apply the good ones together.
        let defaults = serde_json::to_value(T::default()).unwrap_or(Value::Null);
        let mut merged = defaults.clone();
        for (key, (value, source)) in &given {
            let mut alone = defaults.clone();
            set_path(&mut alone, key, value.clone());
            match serde_json::from_value::<T>(alone) {
                Ok(_) => set_path(&mut merged, key, value.clone()),
                Err(e) => problems.push(Problem {
                    key: key.clone(),
                    source: source.clone(),
                    message: format!("{}: {}", describe(value), e),
                }),
            }
        }
        if problems.is_empty() {
            match serde_json::from_value::<T>(merged) {
                Ok(config) => {
                    let sources = given.into_iter().map(|(k, (_, s))| (k, s)).collect();
                    return Ok(Loaded {
                        config,
                        action,
                        sources,
                    });
                }
                Err(e) => problems.push(Problem {
                    key: "(combination)".into(),
                    source: Source::Default,
                    message: e.to_string(),
                }),
            }
        }
        problems.sort_by(|a, b| a.key.cmp(&b.key));
        Err(ConfigError::Invalid {
            service: self.binary.clone(),
            problems,
        })
    }

    /// A Markdown table of every knob of `T`: key, flag, environment variable, default, meaning.
    pub fn reference<T: JsonSchema + Serialize + Default>(&self) -> String {
        let defaults = serde_json::to_value(T::default()).unwrap_or(Value::Null);
        let mut out = format!(
            "# `{}` configuration\n\nGenerated by `{} --config-reference` (`make gen`); do not edit.\n\n\
             Precedence, lowest first: defaults, the TOML file (`--config` / `{}`), environment \
             variables, flags.\n\n| key | flag | environment | default | meaning |\n|---|---|---|---|---|\n",
            self.binary,
            self.binary,
            self.config_env()
        );
        for knob in self.knobs::<T>() {
            let default = get_path(&defaults, &knob.key())
                .map(|v| format!("`{v}`"))
                .unwrap_or_default();
            let mut doc = knob.doc.replace('\n', " ").replace('|', "\\|");
            if !knob.choices.is_empty() {
                doc.push_str(&format!(" One of: {}.", knob.choices.join(", ")));
            }
            out.push_str(&format!(
                "| `{}` | `--{}` | `{}` | {} | {} |\n",
                knob.key(),
                knob.flag,
                knob.env,
                default,
                doc
            ));
        }
        out
    }
}

fn describe(value: &Value) -> String {
    let s = value.to_string();
    if s.len() > 60 {
        format!("{}…", &s[..57])
    } else {
        s
    }
}

fn suggest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    // A candidate sharing the longest common prefix is usually the intended one.
    let best = candidates
        .map(|c| {
            (
                c.chars()
                    .zip(name.chars())
                    .take_while(|(a, b)| a == b)
                    .count(),
                c,
            )
        })
        .max_by_key(|(n, _)| *n);
    match best {
        Some((n, c)) if n * 3 >= name.len() * 2 => format!(" (did you mean {c}?)"),
        _ => String::new(),
    }
}

fn read_file(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the file: {e}"))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| format!("not valid TOML: {e}"))?;
    serde_json::to_value(table).map_err(|e| format!("cannot represent the file: {e}"))
}

/// Follows `$ref`s into `$defs`.
fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    let mut current = schema;
    for _ in 0..16 {
        match current.get("$ref").and_then(Value::as_str) {
            Some(r) => match r.strip_prefix("#/").map(|p| root.pointer(&format!("/{p}"))) {
                Some(Some(target)) => current = target,
                _ => return current,
            },
            None => return current,
        }
    }
    current
}

/// The schemas of an `Option<T>`/enum without the `null` alternative.
fn alternatives(schema: &Value) -> Vec<&Value> {
    ["anyOf", "oneOf"]
        .iter()
        .filter_map(|k| schema.get(*k).and_then(Value::as_array))
        .flatten()
        .filter(|s| s.get("type").and_then(Value::as_str) != Some("null"))
        .collect()
}

/// The named properties of an object schema, following `$ref` and `allOf` (flattened structs).
fn properties<'a>(root: &'a Value, schema: &'a Value) -> Option<Vec<(&'a String, &'a Value)>> {
    let s = resolve(root, schema);
    let mut props: Vec<(&String, &Value)> = Vec::new();
    let mut found = false;
    if let Some(map) = s.get("properties").and_then(Value::as_object) {
        found = true;
        props.extend(map.iter());
    }
    for sub in s
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(more) = properties(root, sub) {
            found = true;
            props.extend(more);
        }
    }
    if !found {
        let alts = alternatives(s);
        if alts.len() == 1 {
            return properties(root, alts[0]);
        }
    }
    found.then_some(props)
}

fn kind_of(root: &Value, schema: &Value) -> (Kind, Vec<String>) {
    let s = resolve(root, schema);
    if let Some(values) = s.get("enum").and_then(Value::as_array) {
        return (
            Kind::String,
            values
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
        );
    }
    if let Some(c) = s.get("const").and_then(Value::as_str) {
        return (Kind::String, vec![c.to_owned()]);
    }
    let types: Vec<&str> = match s.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => Vec::new(),
    };
    match types.first().copied() {
        Some("string") => (Kind::String, Vec::new()),
        Some("integer") => (Kind::Integer, Vec::new()),
        Some("number") => (Kind::Number, Vec::new()),
        Some("boolean") => (Kind::Boolean, Vec::new()),
        Some("array") => {
            let item = s
                .get("items")
                .map(|i| kind_of(root, i).0)
                .unwrap_or(Kind::Inline);
            (Kind::Array(Box::new(item)), Vec::new())
        }
        Some(_) => (Kind::Inline, Vec::new()),
        None => {
            let alts = alternatives(s);
            let mut choices = Vec::new();
            let mut all_strings = !alts.is_empty();
            for alt in &alts {
                let (k, c) = kind_of(root, alt);
                all_strings &= k == Kind::String && !c.is_empty();
                choices.extend(c);
            }
            if all_strings {
                (Kind::String, choices)
            } else if alts.len() == 1 {
                kind_of(root, alts[0])
            } else {
                (Kind::Inline, Vec::new())
            }
        }
    }
}

fn doc_of(root: &Value, schema: &Value) -> String {
    schema
        .get("description")
        .or_else(|| resolve(root, schema).get("description"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn walk(
    root: &Value,
    schema: &Value,
    path: &mut Vec<String>,
    doc: Option<String>,
    out: &mut Vec<Knob>,
) {
    match properties(root, schema) {
        Some(props) => {
            for (name, sub) in props {
                path.push(name.clone());
                walk(root, sub, path, Some(doc_of(root, sub)), out);
                path.pop();
            }
        }
        None => {
            let (kind, choices) = kind_of(root, schema);
            out.push(Knob {
                path: path.clone(),
                doc: doc.unwrap_or_default(),
                env: String::new(),
                flag: String::new(),
                kind,
                choices,
            });
        }
    }
}

/// Turns the file's nested tables into leaf keys, reporting keys the schema does not know.
#[allow(clippy::too_many_arguments)]
fn flatten_file(
    root: &Value,
    schema: &Value,
    value: &Value,
    path: &mut Vec<String>,
    file: &Path,
    knobs: &[Knob],
    given: &mut BTreeMap<String, (Value, Source)>,
    problems: &mut Vec<Problem>,
) {
    let Some(props) = properties(root, schema) else {
        given.insert(
            path.join("."),
            (value.clone(), Source::File(file.to_owned())),
        );
        return;
    };
    let Some(table) = value.as_object() else {
        problems.push(Problem {
            key: path.join("."),
            source: Source::File(file.to_owned()),
            message: format!("expected a table, found {}", describe(value)),
        });
        return;
    };
    let known: BTreeMap<&str, &Value> = props.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    for (key, sub) in table {
        path.push(key.clone());
        match known.get(key.as_str()) {
            Some(sub_schema) => {
                flatten_file(root, sub_schema, sub, path, file, knobs, given, problems)
            }
            None => {
                let dotted = path.join(".");
                let all: BTreeSet<String> = knobs.iter().map(Knob::key).collect();
                problems.push(Problem {
                    key: dotted.clone(),
                    source: Source::File(file.to_owned()),
                    message: format!(
                        "unknown key{}",
                        suggest(&dotted, all.iter().map(String::as_str))
                    ),
                });
            }
        }
        path.pop();
    }
}

/// Converts a string from a flag or an environment variable into a value of the given kind.
fn coerce(kind: &Kind, raw: &str, top: bool) -> Result<Value, String> {
    match kind {
        Kind::String => Ok(Value::String(raw.to_owned())),
        Kind::Integer => raw
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| raw.trim().parse::<u64>().map(Value::from))
            .map_err(|_| format!("expected an integer, got {raw:?}")),
        Kind::Number => raw
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("expected a number, got {raw:?}")),
        Kind::Boolean => match raw.trim() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!("expected true or false, got {raw:?}")),
        },
        Kind::Array(item) if top => {
            if raw.trim().is_empty() {
                return Ok(Value::Array(Vec::new()));
            }
            raw.split(',')
                .map(|part| coerce(item, part.trim(), false))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
        Kind::Array(_) | Kind::Inline => {
            let doc: toml::Table = toml::from_str(&format!("v = {raw}")).map_err(|e| {
                format!(
                    "expected an inline TOML value, got {raw:?}: {}",
                    e.message()
                )
            })?;
            serde_json::to_value(&doc["v"]).map_err(|e| e.to_string())
        }
    }
}

fn set_path(target: &mut Value, key: &str, value: Value) {
    let mut current = target;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if !current.is_object() {
            *current = Value::Object(Map::new());
        }
        let Value::Object(map) = current else { return };
        if i + 1 == parts.len() {
            map.insert((*part).to_owned(), value);
            return;
        }
        current = map
            .entry((*part).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

fn get_path<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(value, |v, part| v.get(part))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::net::SocketAddr;
    use std::time::Duration;

    /// How the sample service logs.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        /// Fast.
        Fast,
        /// Safe.
        Safe,
    }

    /// Nested settings.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
    struct Listen {
        /// Address to bind.
        listen: SocketAddr,
        /// Connection cap.
        max_connections: u32,
    }

    /// A sample configuration.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
    struct Sample {
        /// The listener.
        http: Listen,
        /// How long to wait.
        #[serde(with = "humantime_serde")]
        #[schemars(with = "String")]
        grace: Duration,
        /// Which mode.
        mode: Mode,
        /// Upstream hosts.
        peers: Vec<String>,
        /// Verbose output.
        verbose: bool,
        /// An optional name.
        name: Option<String>,
    }

    impl Default for Sample {
        fn default() -> Self {
            Self {
                http: Listen {
                    listen: "127.0.0.1:8080".parse().expect("addr"),
                    max_connections: 10,
                },
                grace: Duration::from_secs(5),
                mode: Mode::Safe,
                peers: vec![],
                verbose: false,
                name: None,
            }
        }
    }

    fn loader() -> Loader {
        Loader::new("quartet-sample", "sample")
    }

    fn load(args: &[&str], env: &[(&str, &str)]) -> Result<Loaded<Sample>, ConfigError> {
        let mut argv = vec!["quartet-sample"];
        argv.extend_from_slice(args);
        loader().load(
            argv,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    fn problems(err: ConfigError) -> Vec<Problem> {
        match err {
            ConfigError::Invalid { problems, .. } => problems,
            other => panic!("expected invalid configuration, got {other}"),
        }
    }

    #[test]
    fn knobs_cover_every_leaf_with_names_derived_from_the_key() {
        let knobs = loader().knobs::<Sample>();
        let keys: Vec<String> = knobs.iter().map(Knob::key).collect();
        assert_eq!(
            keys,
            [
                "grace",
                "http.listen",
                "http.max_connections",
                "mode",
                "name",
                "peers",
                "verbose"
            ]
        );
        let max = &knobs[2];
        assert_eq!(max.env, "QUARTET_SAMPLE_HTTP_MAX_CONNECTIONS");
        assert_eq!(max.flag, "http-max-connections");
        assert_eq!(max.doc, "Connection cap.");
        assert_eq!(knobs[3].choices, ["fast", "safe"]);
        assert!(knobs.iter().all(|k| !k.doc.is_empty()));
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let loaded = load(&[], &[]).expect("defaults load");
        assert_eq!(loaded.config, Sample::default());
        assert_eq!(loaded.action, Action::Run);
        assert!(loaded.sources.is_empty());
    }

    #[test]
    fn flags_beat_environment_which_beats_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("sample.toml");
        std::fs::write(
            &file,
            "grace = \"1m\"\nverbose = true\n[http]\nlisten = \"0.0.0.0:1\"\nmax_connections = 3\n",
        )
        .expect("write");
        let file = file.to_str().expect("utf-8 path");
        let loaded = load(
            &["--config", file, "--http-listen", "10.0.0.1:3"],
            &[
                ("QUARTET_SAMPLE_HTTP_LISTEN", "10.0.0.1:2"),
                ("QUARTET_SAMPLE_HTTP_MAX_CONNECTIONS", "7"),
                ("QUARTET_SAMPLE_PEERS", "a:1, b:2"),
                ("OTHER_VARIABLE", "ignored"),
            ],
        )
        .expect("loads");
        let c = loaded.config;
        assert_eq!(
            c.http.listen,
            "10.0.0.1:3".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(c.http.max_connections, 7);
        assert_eq!(c.grace, Duration::from_secs(60));
        assert!(c.verbose);
        assert_eq!(c.peers, ["a:1", "b:2"]);
        assert_eq!(
            loaded.sources["http.listen"],
            Source::Flag("http-listen".into())
        );
        assert_eq!(
            loaded.sources["http.max_connections"],
            Source::Env("QUARTET_SAMPLE_HTTP_MAX_CONNECTIONS".into())
        );
        assert!(matches!(loaded.sources["grace"], Source::File(_)));
    }

    #[test]
    fn the_file_can_be_named_by_environment_and_lists_repeat_as_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("s.toml");
        std::fs::write(&file, "mode = \"fast\"\nname = \"n1\"\n").expect("write");
        let file = file.to_str().expect("utf-8 path");
        let loaded = load(
            &["--peers", "x", "--peers", "y"],
            &[("QUARTET_SAMPLE_CONFIG", file)],
        )
        .expect("loads");
        assert_eq!(loaded.config.mode, Mode::Fast);
        assert_eq!(loaded.config.name.as_deref(), Some("n1"));
        assert_eq!(loaded.config.peers, ["x", "y"]);
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_key_and_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("bad.toml");
        std::fs::write(
            &file,
            "grace = \"soon\"\n[http]\nlisten = \"nowhere\"\nlisten_backlog = 5\n",
        )
        .expect("write");
        let file = file.to_str().expect("utf-8 path");
        let err = load(
            &["--config", file, "--verbose", "maybe"],
            &[
                ("QUARTET_SAMPLE_MODE", "reckless"),
                ("QUARTET_SAMPLE_HTTP_LISTN", "x"),
            ],
        )
        .expect_err("must fail");
        let text = err.to_string();
        let ps = problems(err);
        let keys: Vec<&str> = ps.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "QUARTET_SAMPLE_HTTP_LISTN",
                "grace",
                "http.listen",
                "http.listen_backlog",
                "mode",
                "verbose"
            ],
            "{text}"
        );
        assert!(
            ps[0]
                .message
                .contains("did you mean QUARTET_SAMPLE_HTTP_LISTEN"),
            "{text}"
        );
        assert!(ps[3].message.contains("unknown key"), "{text}");
        assert_eq!(ps[4].source, Source::Env("QUARTET_SAMPLE_MODE".into()));
        assert!(ps[4].message.contains("reckless"), "{text}");
        assert_eq!(ps[5].source, Source::Flag("verbose".into()));
        assert!(
            text.starts_with("invalid configuration for quartet-sample: 6 problem(s)"),
            "{text}"
        );
    }

    #[test]
    fn unreadable_or_malformed_files_are_named() {
        let err = load(&["--config", "/nonexistent/quartet.toml"], &[]).expect_err("must fail");
        let ps = problems(err);
        assert_eq!(ps.len(), 1);
        assert_eq!(
            ps[0].source,
            Source::File("/nonexistent/quartet.toml".into())
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("broken.toml");
        std::fs::write(&file, "[http\n").expect("write");
        let ps = problems(
            load(&["--config", file.to_str().expect("utf-8")], &[]).expect_err("must fail"),
        );
        assert!(ps[0].message.starts_with("not valid TOML"), "{}", ps[0]);
    }

    #[test]
    fn unknown_flags_are_rejected_by_the_parser() {
        let err = load(&["--no-such-flag", "1"], &[]).expect_err("must fail");
        assert!(matches!(err, ConfigError::Cli(_)));
    }

    #[test]
    fn the_reference_lists_every_key_with_its_default() {
        let text = loader().reference::<Sample>();
        assert!(text.contains("| `http.listen` | `--http-listen` | `QUARTET_SAMPLE_HTTP_LISTEN` | `\"127.0.0.1:8080\"` | Address to bind. |"), "{text}");
        assert!(text.contains("One of: fast, safe."), "{text}");
    }
}
