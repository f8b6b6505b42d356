//! Where the relays are, from DNS SRV records (RFC 2782), as Debian's fedmsg found its
//! endpoints: a relay list in hark.yaml may say `{srv: example.org}` instead of naming
//! endpoints, and then `_hark-submit._tcp`, `_hark-publish._tcp` and `_hark-replay._tcp`
//! records of that domain say where to submit, subscribe and fetch missed events.
//!
//! This module owns the lookup (hickory-resolver, on a runtime of its own so callers stay
//! plain threads), the ordering of the answers by priority and weight, and [`Followed`]: a
//! list that is looked up again when its TTL runs out or a connection to it fails, and
//! tells its user which endpoints came and went. A failed lookup never empties a list that
//! was known: relays stay where they were last seen until DNS says otherwise.
//!
//! Targets are resolved here too and handed on as `tcp://ADDRESS:PORT`, so that the
//! nameserver that answered the SRV query (perhaps a configured one, not the system's) also
//! answers for the hosts it names.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use rand_core::RngCore as _;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// A relay list as hark.yaml and the flags give it: endpoints, or a domain whose SRV
/// records name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayList {
    Endpoints(Vec<String>),
    Srv(String),
}

impl Default for RelayList {
    fn default() -> Self {
        RelayList::Endpoints(Vec::new())
    }
}

impl RelayList {
    /// The endpoints written out; none for a domain (they are only known once looked up).
    pub fn endpoints(&self) -> &[String] {
        match self {
            RelayList::Endpoints(e) => e,
            RelayList::Srv(_) => &[],
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, RelayList::Endpoints(e) if e.is_empty())
    }
}

impl From<Vec<String>> for RelayList {
    fn from(endpoints: Vec<String>) -> Self {
        RelayList::Endpoints(endpoints)
    }
}

impl fmt::Display for RelayList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelayList::Endpoints(e) => f.write_str(&e.join(" ")),
            RelayList::Srv(domain) => write!(f, "srv:{domain}"),
        }
    }
}

impl Serialize for RelayList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        match self {
            RelayList::Endpoints(e) => e.serialize(s),
            RelayList::Srv(domain) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("srv", domain)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for RelayList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RelayList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of endpoints, or {srv: DOMAIN} to find them in DNS")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut endpoints = Vec::new();
                while let Some(e) = seq.next_element::<String>()? {
                    endpoints.push(e);
                }
                Ok(RelayList::Endpoints(endpoints))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut domain = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "srv" {
                        return Err(serde::de::Error::unknown_field(&key, &["srv"]));
                    }
                    let value: String = map.next_value()?;
                    check_domain(&value).map_err(serde::de::Error::custom)?;
                    domain = Some(value);
                }
                domain
                    .map(RelayList::Srv)
                    .ok_or_else(|| serde::de::Error::missing_field("srv"))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A domain as `--srv` and `{srv: ...}` take it: a DNS name, not an endpoint or a URL.
pub fn check_domain(domain: &str) -> Result<(), String> {
    let plain = domain.trim_end_matches('.');
    let ok = !plain.is_empty()
        && plain.len() <= 253
        && plain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{domain:?} is not a domain name: give the domain whose SRV records name the relays, e.g. example.org"
        ))
    }
}

/// What a relay offers, each under its own SRV name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Submit,
    Publish,
    Replay,
}

impl Service {
    pub fn label(self) -> &'static str {
        match self {
            Service::Submit => "_hark-submit._tcp",
            Service::Publish => "_hark-publish._tcp",
            Service::Replay => "_hark-replay._tcp",
        }
    }
}

/// One SRV answer, its target resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub priority: u16,
    pub weight: u16,
    /// `tcp://ADDRESS:PORT`.
    pub endpoint: String,
}

/// What one lookup found, and until when it holds.
#[derive(Debug, Clone)]
pub struct Answer {
    pub records: Vec<Record>,
    pub valid_until: Instant,
}

/// A stub resolver: the system's (resolv.conf), or the nameservers hark.yaml names.
pub struct Resolver {
    runtime: tokio::runtime::Runtime,
    resolver: TokioResolver,
}

impl Resolver {
    /// `nameservers` as `ADDRESS:PORT`; empty: the system's configuration.
    pub fn new(nameservers: &[SocketAddr]) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut opts = ResolverOpts::default();
        // A relay that moved must be found within the record's TTL, not an hour later.
        opts.positive_max_ttl = Some(MAX_RECHECK);
        opts.negative_max_ttl = Some(Duration::from_secs(30));
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        let builder = if nameservers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| anyhow::anyhow!("reading the system's DNS configuration: {e}"))?
        } else {
            let mut group = NameServerConfigGroup::new();
            for ns in nameservers {
                group.merge(NameServerConfigGroup::from_ips_clear(
                    &[ns.ip()],
                    ns.port(),
                    true,
                ));
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], group),
                TokioConnectionProvider::default(),
            )
        };
        let resolver = {
            let _entered = runtime.enter();
            builder.with_options(opts).build()
        };
        Ok(Resolver { runtime, resolver })
    }

    /// The records of `service` under `domain`, each target resolved to its addresses.
    pub fn lookup(&self, domain: &str, service: Service) -> Result<Answer, String> {
        let name = format!("{}.{}.", service.label(), domain.trim_end_matches('.'));
        self.runtime.block_on(async {
            let srv = self
                .resolver
                .srv_lookup(name.as_str())
                .await
                .map_err(|e| format!("{name}: {e}"))?;
            let mut valid_until = srv.as_lookup().valid_until();
            let mut records = Vec::new();
            for r in srv.iter() {
                let host = r.target().to_ascii();
                let ips = self
                    .resolver
                    .lookup_ip(host.as_str())
                    .await
                    .map_err(|e| format!("{name}: target {host}: {e}"))?;
                valid_until = valid_until.min(ips.valid_until());
                for ip in ips.iter() {
                    records.push(Record {
                        priority: r.priority(),
                        weight: r.weight(),
                        endpoint: endpoint(ip, r.port()),
                    });
                }
            }
            Ok(Answer {
                records,
                valid_until,
            })
        })
    }

    /// Forget cached answers, so the next lookup asks the nameserver.
    pub fn forget(&self) {
        self.resolver.clear_cache();
    }
}

fn endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("tcp://{v4}:{port}"),
        IpAddr::V6(v6) => format!("tcp://[{v6}]:{port}"),
    }
}

/// RFC 2782's order: by priority, lowest first; within one priority, a weighted random
/// order (a record of weight 0 rarely first). Each inner list is one priority.
pub fn tiers(records: &[Record], mut random: impl FnMut(u32) -> u32) -> Vec<Vec<String>> {
    let mut priorities: Vec<u16> = records.iter().map(|r| r.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    priorities
        .into_iter()
        .map(|p| {
            let mut left: Vec<&Record> = records.iter().filter(|r| r.priority == p).collect();
            // Weight 0 records first, so that each draw below can still pick them.
            left.sort_by_key(|r| r.weight);
            let mut order = Vec::new();
            while !left.is_empty() {
                let total: u32 = left.iter().map(|r| u32::from(r.weight)).sum();
                let pick = if total == 0 { 0 } else { random(total + 1) };
                let mut running = 0;
                let i = left
                    .iter()
                    .position(|r| {
                        running += u32::from(r.weight);
                        running >= pick
                    })
                    .unwrap_or(0);
                let chosen = left.remove(i);
                if !order.contains(&chosen.endpoint) {
                    order.push(chosen.endpoint.clone());
                }
            }
            order
        })
        .collect()
}

/// A uniformly random number below `bound`, from the operating system.
pub fn os_random(bound: u32) -> u32 {
    rand_core::OsRng.next_u32() % bound.max(1)
}

/// The longest an answer is trusted, whatever its TTL, and the shortest wait between two
/// lookups (a TTL of 0 must not become a busy loop).
const MAX_RECHECK: Duration = Duration::from_secs(300);
const MIN_RECHECK: Duration = Duration::from_secs(1);
/// After a failed lookup, the known list stays, and DNS is asked again this soon.
const RETRY_FAILED: Duration = Duration::from_secs(5);

/// Endpoints that came and went with a new answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// The endpoints of one service of one domain, kept current.
pub struct Followed {
    resolver: Resolver,
    domain: String,
    service: Service,
    records: Vec<Record>,
    next_lookup: Instant,
    last_lookup: Option<Instant>,
}

impl Followed {
    /// Look up at once. A failure is logged and retried later: the daemon starts (and says
    /// so) with no relay, as it would with relays that are down.
    pub fn start(resolver: Resolver, domain: &str, service: Service) -> Self {
        let mut followed = Followed {
            resolver,
            domain: domain.trim_end_matches('.').to_string(),
            service,
            records: Vec::new(),
            next_lookup: Instant::now(),
            last_lookup: None,
        };
        followed.refresh();
        followed
    }

    /// Every endpoint of every priority (subscribers listen to them all: a publisher may
    /// use any of them).
    pub fn endpoints(&self) -> Vec<String> {
        let mut all: Vec<String> = self.records.iter().map(|r| r.endpoint.clone()).collect();
        all.sort();
        all.dedup();
        all
    }

    /// The endpoints by priority, in RFC 2782's order (publishers and replay try the first
    /// tier first).
    pub fn tiers(&self) -> Vec<Vec<String>> {
        tiers(&self.records, os_random)
    }

    /// `_hark-publish._tcp.example.org`, for log lines.
    pub fn name(&self) -> String {
        format!("{}.{}", self.service.label(), self.domain)
    }

    /// A connection to one of the endpoints failed: the relay may have moved, so look again
    /// soon, asking the nameserver rather than the cache.
    pub fn connection_failed(&mut self) {
        let soon = self
            .last_lookup
            .map_or_else(Instant::now, |t| t + MIN_RECHECK);
        if soon < self.next_lookup {
            self.next_lookup = soon;
            self.resolver.forget();
        }
    }

    /// Look up again if the answer ran out; what changed, if anything.
    pub fn refresh_if_due(&mut self) -> Option<Change> {
        if Instant::now() < self.next_lookup {
            return None;
        }
        self.refresh()
    }

    fn refresh(&mut self) -> Option<Change> {
        let now = Instant::now();
        self.last_lookup = Some(now);
        match self.resolver.lookup(&self.domain, self.service) {
            Ok(answer) => {
                let wait = answer
                    .valid_until
                    .saturating_duration_since(now)
                    .clamp(MIN_RECHECK, MAX_RECHECK);
                self.next_lookup = now + wait;
                let before = self.endpoints();
                if answer.records.is_empty() && !before.is_empty() {
                    warn!(name = %self.name(), "discovery: no records any more; keeping the relays last found");
                    return None;
                }
                self.records = answer.records;
                let after = self.endpoints();
                let change = Change {
                    added: after
                        .iter()
                        .filter(|e| !before.contains(e))
                        .cloned()
                        .collect(),
                    removed: before
                        .iter()
                        .filter(|e| !after.contains(e))
                        .cloned()
                        .collect(),
                };
                if change == Change::default() {
                    return None;
                }
                info!(
                    name = %self.name(),
                    endpoints = %after.join(" "),
                    added = %change.added.join(" "),
                    removed = %change.removed.join(" "),
                    "discovery: relays changed"
                );
                Some(change)
            }
            Err(e) => {
                self.next_lookup = now + RETRY_FAILED;
                if self.records.is_empty() {
                    warn!(
                        "discovery: {e}; no relay known yet, asking again in {}s",
                        RETRY_FAILED.as_secs()
                    );
                } else {
                    warn!("discovery: {e}; keeping the relays last found");
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(priority: u16, weight: u16, port: u16) -> Record {
        Record {
            priority,
            weight,
            endpoint: format!("tcp://127.0.0.1:{port}"),
        }
    }

    #[test]
    fn lower_priority_comes_first_and_each_priority_is_one_tier() {
        let records = [rec(20, 0, 3), rec(10, 5, 1), rec(10, 5, 2)];
        let t = tiers(&records, |_| 0);
        assert_eq!(t.len(), 2);
        assert_eq!(t[1], vec!["tcp://127.0.0.1:3".to_string()]);
        let mut first = t[0].clone();
        first.sort();
        assert_eq!(first, vec!["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"]);
    }

    #[test]
    fn weight_decides_who_goes_first_in_proportion() {
        // Weights 1 and 3: the draw is in 0..=4 and picks the first record whose running
        // sum reaches it; weight-3 first for draws 2, 3 and 4.
        let records = [rec(1, 3, 2), rec(1, 1, 1)];
        let firsts: Vec<String> = (0..5)
            .map(|draw| tiers(&records, |_| draw)[0][0].clone())
            .collect();
        let heavy = firsts.iter().filter(|e| e.ends_with(":2")).count();
        assert_eq!(heavy, 3, "{firsts:?}");
    }

    #[test]
    fn a_relay_list_is_endpoints_or_a_domain() {
        let list: RelayList = serde_json::from_str(r#"["tcp://a:1"]"#).unwrap();
        assert_eq!(list, RelayList::Endpoints(vec!["tcp://a:1".into()]));
        let srv: RelayList = serde_json::from_str(r#"{"srv":"example.org"}"#).unwrap();
        assert_eq!(srv, RelayList::Srv("example.org".into()));
        assert_eq!(
            serde_json::to_string(&srv).unwrap(),
            r#"{"srv":"example.org"}"#
        );
        let bad = serde_json::from_str::<RelayList>(r#"{"dns":"example.org"}"#).unwrap_err();
        assert!(bad.to_string().contains("unknown field `dns`"), "{bad}");
        let url = serde_json::from_str::<RelayList>(r#"{"srv":"tcp://x:1"}"#).unwrap_err();
        assert!(url.to_string().contains("not a domain name"), "{url}");
    }
}
