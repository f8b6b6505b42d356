//! `run.unit`: a rule's job as a transient systemd unit, and what it may ask for. A user
//! (only those `trigger.unit_users` in hark.yaml allows), a slice, and properties from a
//! checked allow-list of sandboxing settings and resource limits, each with the D-Bus name
//! and type `StartTransientUnit` takes. Everything is checked at load with file:line:col;
//! the daemon passes the result to systemd as it is (`src/jobs/unit.rs`).

use std::sync::RwLock;

use serde_json::Value;

/// What a property's value must be.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Bool,
    /// One of these words (`true`/`false` are read as `yes`/`no`).
    Word(&'static [&'static str]),
    /// Absolute paths (a leading `-`: ignored when missing, as in unit files).
    Paths,
    /// Bytes, with a K, M, G or T suffix (powers of 1024), or `infinity`.
    Bytes,
    /// `N%` of one CPU.
    Percent,
    /// A positive count, or `infinity`.
    Count,
    /// A nice level, -20 to 19.
    Nice,
}

/// The allow-list: rule name, what it takes, the D-Bus property it sets, what it does.
const ALLOWED: &[(&str, Kind, &str, &str)] = &[
    (
        "ProtectSystem",
        Kind::Word(&["yes", "no", "full", "strict"]),
        "ProtectSystem",
        "/usr, /boot (and /etc with full; everything with strict) read-only",
    ),
    (
        "ProtectHome",
        Kind::Word(&["yes", "no", "read-only", "tmpfs"]),
        "ProtectHome",
        "/home, /root and /run/user hidden or read-only",
    ),
    (
        "ReadWritePaths",
        Kind::Paths,
        "ReadWritePaths",
        "writable despite ProtectSystem",
    ),
    ("ReadOnlyPaths", Kind::Paths, "ReadOnlyPaths", "read-only"),
    (
        "InaccessiblePaths",
        Kind::Paths,
        "InaccessiblePaths",
        "not there at all",
    ),
    ("PrivateTmp", Kind::Bool, "PrivateTmp", "a /tmp of its own"),
    (
        "PrivateNetwork",
        Kind::Bool,
        "PrivateNetwork",
        "only a loopback interface",
    ),
    (
        "PrivateDevices",
        Kind::Bool,
        "PrivateDevices",
        "a minimal /dev",
    ),
    (
        "NoNewPrivileges",
        Kind::Bool,
        "NoNewPrivileges",
        "no setuid or file capabilities",
    ),
    (
        "ProtectKernelTunables",
        Kind::Bool,
        "ProtectKernelTunables",
        "/proc/sys, /sys read-only",
    ),
    (
        "ProtectKernelModules",
        Kind::Bool,
        "ProtectKernelModules",
        "no module loading",
    ),
    (
        "ProtectKernelLogs",
        Kind::Bool,
        "ProtectKernelLogs",
        "no kernel log access",
    ),
    (
        "ProtectControlGroups",
        Kind::Bool,
        "ProtectControlGroups",
        "/sys/fs/cgroup read-only",
    ),
    (
        "ProtectClock",
        Kind::Bool,
        "ProtectClock",
        "cannot set the clock",
    ),
    (
        "ProtectHostname",
        Kind::Bool,
        "ProtectHostname",
        "cannot set the hostname",
    ),
    (
        "RestrictSUIDSGID",
        Kind::Bool,
        "RestrictSUIDSGID",
        "cannot make setuid/setgid files",
    ),
    (
        "RestrictRealtime",
        Kind::Bool,
        "RestrictRealtime",
        "no realtime scheduling",
    ),
    (
        "LockPersonality",
        Kind::Bool,
        "LockPersonality",
        "cannot change the execution domain",
    ),
    (
        "MemoryDenyWriteExecute",
        Kind::Bool,
        "MemoryDenyWriteExecute",
        "no writable and executable memory",
    ),
    ("MemoryMax", Kind::Bytes, "MemoryMax", "hard memory limit"),
    (
        "MemoryHigh",
        Kind::Bytes,
        "MemoryHigh",
        "memory above this is reclaimed first",
    ),
    (
        "CPUQuota",
        Kind::Percent,
        "CPUQuotaPerSecUSec",
        "CPU time, in % of one CPU",
    ),
    (
        "TasksMax",
        Kind::Count,
        "TasksMax",
        "most processes and threads",
    ),
    ("Nice", Kind::Nice, "Nice", "scheduling priority"),
];

/// A property value in the D-Bus type systemd takes for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropValue {
    /// `b`
    Bool(bool),
    /// `s`
    Str(String),
    /// `as`
    Strs(Vec<String>),
    /// `t`
    U64(u64),
    /// `i`
    I32(i32),
}

/// One checked property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    /// As the rule names it (`CPUQuota`).
    pub name: &'static str,
    /// As D-Bus names it (`CPUQuotaPerSecUSec`).
    pub dbus: &'static str,
    pub value: PropValue,
    /// The value as a unit file would write it, for `hark rules test` and `jobs show`.
    pub text: String,
}

/// A rule's `run.unit`, checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitSpec {
    /// `None`: the daemon's own user.
    pub user: Option<String>,
    pub slice: Option<String>,
    pub properties: Vec<Property>,
}

impl UnitSpec {
    /// `User=root Slice=... ProtectSystem=strict ...`, as `hark rules test` shows it.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(u) = &self.user {
            out.push(format!("User={u}"));
        }
        if let Some(s) = &self.slice {
            out.push(format!("Slice={s}"));
        }
        out.extend(
            self.properties
                .iter()
                .map(|p| format!("{}={}", p.name, p.text)),
        );
        out
    }
}

/// The users `run.unit.user` may name: `trigger.unit_users`, set by the daemon and by
/// `hark rules check`/`test` from hark.yaml before they load rules.
/// `None` until set: hark.yaml's default, `[root]`, so that commands reading rules without
/// a hark.yaml (`hark rules list`) accept the shipped ones.
static ALLOWED_USERS: RwLock<Option<Vec<String>>> = RwLock::new(None);

pub fn set_allowed_users(users: &[String]) {
    if let Ok(mut list) = ALLOWED_USERS.write() {
        *list = Some(users.to_vec());
    }
}

pub fn allowed_users() -> Vec<String> {
    ALLOWED_USERS
        .read()
        .ok()
        .and_then(|l| l.clone())
        .unwrap_or_else(|| vec!["root".to_string()])
}

/// The allow-list as documentation lines (`name: takes; effect`).
pub fn allow_list() -> impl Iterator<Item = String> {
    ALLOWED.iter().map(|(name, kind, _, what)| {
        let takes = match kind {
            Kind::Bool => "true or false".to_string(),
            Kind::Word(words) => words.join(", "),
            Kind::Paths => "absolute paths".into(),
            Kind::Bytes => "bytes (K, M, G, T) or infinity".into(),
            Kind::Percent => "N%".into(),
            Kind::Count => "a count or infinity".into(),
            Kind::Nice => "-20 to 19".into(),
        };
        format!("{name}: {takes}; {what}")
    })
}

/// Why a user name is refused, if it is.
pub fn check_user(user: &str, allowed: &[String]) -> Result<(), String> {
    let mut chars = user.chars();
    let well_formed = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c))
        && user.len() <= 32;
    if !well_formed {
        return Err(format!("run.unit.user {user:?} is not a user name"));
    }
    if !allowed.iter().any(|a| a == user) {
        let list = if allowed.is_empty() {
            "it allows none".to_string()
        } else {
            format!("it allows {}", allowed.join(", "))
        };
        return Err(format!(
            "run.unit.user {user} is not in trigger.unit_users of hark.yaml ({list}); \
             the admin decides which users rules may run as"
        ));
    }
    Ok(())
}

/// Why a slice name is refused, if it is.
pub fn check_slice(slice: &str) -> Result<(), String> {
    let stem = slice.strip_suffix(".slice").unwrap_or("");
    if stem.is_empty()
        || !stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":_.-".contains(c))
    {
        return Err(format!(
            "run.unit.slice {slice:?} must be a slice unit name such as hark-jobs.slice"
        ));
    }
    Ok(())
}

/// Check one `properties` entry. `Err(None)` when the name is not on the allow-list (the
/// caller points at the key), `Err(Some(why))` for a bad value (at the value).
pub fn property(name: &str, value: &Value) -> Result<Property, Option<String>> {
    let Some(&(name, kind, dbus, _)) = ALLOWED.iter().find(|(n, ..)| *n == name) else {
        return Err(None);
    };
    let bad = |what: &str| Some(format!("{name} takes {what}, not {value}"));
    let (value, text) = match kind {
        Kind::Bool => match value {
            Value::Bool(b) => (PropValue::Bool(*b), b.to_string()),
            _ => return Err(bad("true or false")),
        },
        Kind::Word(words) => {
            let word = match value {
                Value::Bool(true) => "yes",
                Value::Bool(false) => "no",
                Value::String(s) => s.as_str(),
                _ => "",
            };
            if !words.contains(&word) {
                return Err(bad(&format!("one of {}", words.join(", "))));
            }
            (PropValue::Str(word.to_string()), word.to_string())
        }
        Kind::Paths => {
            let items: Vec<&Value> = match value {
                Value::Array(items) => items.iter().collect(),
                one => vec![one],
            };
            let mut paths = Vec::new();
            for item in items {
                let Some(p) = item.as_str() else {
                    return Err(bad("a list of absolute paths"));
                };
                let bare = p.strip_prefix('-').unwrap_or(p);
                if !bare.starts_with('/') || bare.contains("..") || p.contains(char::is_whitespace)
                {
                    return Err(Some(format!(
                        "{name}: {p:?} is not an absolute path without '..' or spaces"
                    )));
                }
                paths.push(p.to_string());
            }
            if paths.is_empty() {
                return Err(bad("at least one path"));
            }
            let text = paths.join(" ");
            (PropValue::Strs(paths), text)
        }
        Kind::Bytes => {
            let n = bytes(value).ok_or_else(|| bad("bytes such as 4G, 512M, or infinity"))?;
            (PropValue::U64(n), text_of(value))
        }
        Kind::Percent => {
            let pct = value
                .as_str()
                .and_then(|s| s.strip_suffix('%'))
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|n| *n > 0 && *n <= 100_000)
                .ok_or_else(|| bad("a percentage such as 200%"))?;
            // systemd's unit: CPU microseconds per second of wall time.
            (PropValue::U64(pct * 10_000), format!("{pct}%"))
        }
        Kind::Count => {
            let n = match value {
                Value::String(s) if s == "infinity" => u64::MAX,
                v => v
                    .as_u64()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad("a positive count or infinity"))?,
            };
            (PropValue::U64(n), text_of(value))
        }
        Kind::Nice => {
            let n = value
                .as_i64()
                .filter(|n| (-20..=19).contains(n))
                .ok_or_else(|| bad("a nice level from -20 to 19"))?;
            (PropValue::I32(n as i32), n.to_string())
        }
    };
    Ok(Property {
        name,
        dbus,
        value,
        text,
    })
}

/// The names on the allow-list, for the error about one that is not.
pub fn allowed_names() -> String {
    ALLOWED
        .iter()
        .map(|(n, ..)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn bytes(value: &Value) -> Option<u64> {
    if let Some(n) = value.as_u64() {
        return Some(n).filter(|n| *n > 0);
    }
    let s = value.as_str()?;
    if s == "infinity" {
        return Some(u64::MAX);
    }
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 10),
        b'M' => (&s[..s.len() - 1], 20),
        b'G' => (&s[..s.len() - 1], 30),
        b'T' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift).filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_become_the_dbus_types_systemd_takes() {
        let p = property("CPUQuota", &json!("200%")).unwrap();
        assert_eq!(
            (p.dbus, p.value),
            ("CPUQuotaPerSecUSec", PropValue::U64(2_000_000))
        );
        let p = property("MemoryMax", &json!("4G")).unwrap();
        assert_eq!(p.value, PropValue::U64(4 << 30));
        assert_eq!(p.text, "4G");
        assert_eq!(
            property("MemoryMax", &json!("infinity")).unwrap().value,
            PropValue::U64(u64::MAX)
        );
        assert_eq!(
            property("TasksMax", &json!(512)).unwrap().value,
            PropValue::U64(512)
        );
        assert_eq!(
            property("ProtectSystem", &json!(true)).unwrap().value,
            PropValue::Str("yes".into())
        );
        assert_eq!(
            property("ReadWritePaths", &json!(["/srv/a", "-/srv/b"]))
                .unwrap()
                .value,
            PropValue::Strs(vec!["/srv/a".into(), "-/srv/b".into()])
        );
        assert_eq!(
            property("Nice", &json!(-5)).unwrap().value,
            PropValue::I32(-5)
        );
    }

    #[test]
    fn unknown_names_and_bad_values_are_refused() {
        assert_eq!(property("ExecStartPre", &json!("/bin/x")), Err(None));
        assert_eq!(property("User", &json!("root")), Err(None));
        for (name, value) in [
            ("PrivateTmp", json!("yes")),
            ("ProtectSystem", json!("maybe")),
            ("ReadWritePaths", json!(["srv"])),
            ("ReadWritePaths", json!(["/srv/../etc"])),
            ("MemoryMax", json!("4X")),
            ("MemoryMax", json!(0)),
            ("CPUQuota", json!(200)),
            ("CPUQuota", json!("0%")),
            ("TasksMax", json!(0)),
            ("Nice", json!(20)),
        ] {
            assert!(
                matches!(property(name, &value), Err(Some(_))),
                "{name}: {value}"
            );
        }
    }

    #[test]
    fn users_must_be_allowed_and_slices_named_like_slices() {
        let allowed = vec!["root".to_string(), "mirror".to_string()];
        assert!(check_user("root", &allowed).is_ok());
        let e = check_user("nobody", &allowed).unwrap_err();
        assert!(
            e.contains("trigger.unit_users") && e.contains("root, mirror"),
            "{e}"
        );
        assert!(check_user("root", &[]).unwrap_err().contains("allows none"));
        assert!(check_user("Root;", &allowed).is_err());
        assert!(check_slice("hark-jobs.slice").is_ok());
        assert!(check_slice("hark-jobs").is_err());
        assert!(check_slice("a b.slice").is_err());
    }
}
