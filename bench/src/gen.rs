//! Synthetic but wire-faithful Bitrix24 traffic: portals, form bodies in PHP
//! `http_build_query` style, and the deterministic event plan of the bulk fill.

/// A small, fast, seedable PRNG (SplitMix64). Deterministic per seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// SplitMix64's finaliser: a good 64-bit hash of `x`.
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn hex32(a: u64, b: u64) -> String {
    format!("{a:016x}{b:016x}")
}

/// A trusted portal: `member_id`, `application_token`, domain.
#[derive(Debug, Clone)]
pub struct Portal {
    pub member: String,
    pub token: String,
    pub domain: String,
}

/// `n` portals with 32-hex member ids and tokens like real installations,
/// and domains as long as the docs' `some-domain.bitrix24.com`.
pub fn portals(n: usize, seed: u64) -> Vec<Portal> {
    (0..n as u64)
        .map(|i| {
            let h = |k: u64| mix(seed.wrapping_mul(0x1000_0001) ^ (i << 8) ^ k);
            Portal {
                member: hex32(h(1), h(2)),
                token: hex32(h(3), h(4)),
                domain: format!("portal-{i:04}.bitrix24.com"),
            }
        })
        .collect()
}

/// The `[portals]` table of a b24-journal config file.
pub fn portals_toml(portals: &[Portal]) -> String {
    let mut s = String::from("[portals]\n");
    for p in portals {
        s.push_str(&format!("{} = \"{}\"\n", p.member, p.token));
    }
    s
}

/// The CRM activity events the mix draws from, with their weights (%).
pub const EVENT_MIX: [(&str, u64); 3] = [
    ("ONCRMACTIVITYADD", 35),
    ("ONCRMACTIVITYUPDATE", 50),
    ("ONCRMACTIVITYDELETE", 15),
];

pub fn pick_event(r: u64) -> &'static str {
    let mut x = r % 100;
    for (name, w) in EVENT_MIX {
        if x < w {
            return name;
        }
        x -= w;
    }
    EVENT_MIX[0].0
}

const ALNUM: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

fn push_token(out: &mut Vec<u8>, rng: &mut Rng, len: usize) {
    let mut r = rng.next_u64();
    for i in 0..len {
        if i % 10 == 9 {
            r = rng.next_u64();
        }
        out.push(ALNUM[(r % 36) as usize]);
        r /= 36;
    }
}

fn push_u64(out: &mut Vec<u8>, v: u64) {
    let mut b = [0u8; 20];
    let mut i = b.len();
    let mut v = v;
    loop {
        i -= 1;
        b[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&b[i..]);
}

/// Appends the body Bitrix24 sends for a CRM activity event from an
/// application: the same keys, order and encoding as
/// `tests/fixtures/ONCRMACTIVITYUPDATE-app.form` (brackets percent-encoded,
/// full app `auth` block with fresh OAuth tokens per event).
pub fn write_body(out: &mut Vec<u8>, p: &Portal, event: &str, entity: u64, ts: u64, rng: &mut Rng) {
    out.extend_from_slice(b"event=");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"&data%5BFIELDS%5D%5BID%5D=");
    push_u64(out, entity);
    out.extend_from_slice(b"&ts=");
    push_u64(out, ts);
    out.extend_from_slice(b"&auth%5Baccess_token%5D=");
    push_token(out, rng, 32);
    out.extend_from_slice(b"&auth%5Bexpires_in%5D=3600&auth%5Bscope%5D=crm&auth%5Bdomain%5D=");
    out.extend_from_slice(p.domain.as_bytes());
    out.extend_from_slice(
        b"&auth%5Bserver_endpoint%5D=https%3A%2F%2Foauth.bitrix.info%2Frest%2F&auth%5Bstatus%5D=L&auth%5Bclient_endpoint%5D=https%3A%2F%2F",
    );
    out.extend_from_slice(p.domain.as_bytes());
    out.extend_from_slice(b"%2Frest%2F&auth%5Bmember_id%5D=");
    out.extend_from_slice(p.member.as_bytes());
    out.extend_from_slice(b"&auth%5Brefresh_token%5D=");
    push_token(out, rng, 32);
    out.extend_from_slice(b"&auth%5Bapplication_token%5D=");
    out.extend_from_slice(p.token.as_bytes());
}

/// Entity ids of HTTP ingest: a bijection of the global event counter onto
/// `1..=10^8`, so ids look random but no two fresh events share one (every
/// fresh body is then a distinct event: the expected answer is known).
pub fn ingest_entity(k: u64) -> u64 {
    const M: u64 = 100_000_000;
    // 7_654_321 is coprime with 10^8 (odd, not a multiple of 5).
    1 + ((k % M) * 7_654_321 + 12_345_678) % M
}

/// The bulk fill's plan: event `g` (0-based, global) of a fill of `n` events
/// across `portals` portals, with about `per_entity` events per entity id.
/// Deterministic, so a fill can be continued (100k first, then up to N) and
/// the query phase knows what exists.
#[derive(Debug, Clone, Copy)]
pub struct FillPlan {
    pub portals: u64,
    pub n: u64,
    pub base_ts: u64,
    /// Events per entity id the plan aims at (1: every event has its own).
    pub per_entity: u64,
    /// Entity ids per portal are `ENTITY_BASE .. ENTITY_BASE + entity_range`.
    pub entity_range: u64,
}

pub const ENTITY_BASE: u64 = 100_000;
pub const FILL_BASE_TS: u64 = 1_700_000_000;
/// The entity mixes the report measures bytes on disk for (events per
/// entity id): one event per activity, a few updates, a busy record.
pub const MIXES: [u64; 3] = [1, 3, 10];
/// The mix of the query journal and of the ingest phase unless told
/// otherwise: an activity added and updated a couple of times.
pub const DEFAULT_MIX: u64 = 3;

/// One planned event.
#[derive(Debug, Clone, Copy)]
pub struct Planned {
    pub portal: usize,
    pub event: &'static str,
    pub entity: u64,
    pub ts: u64,
}

impl FillPlan {
    pub fn new(portals: u64, n: u64, per_entity: u64) -> Self {
        let per_portal = n.div_ceil(portals).max(1);
        let per_entity = per_entity.max(1);
        let mut r = per_portal.div_ceil(per_entity).max(1);
        // The permutation below needs the range coprime with 7919 (prime).
        if r.is_multiple_of(7919) {
            r += 1;
        }
        FillPlan {
            portals,
            n,
            base_ts: FILL_BASE_TS,
            per_entity,
            entity_range: r,
        }
    }

    /// Events per portal after the whole plan.
    pub fn per_portal(&self) -> u64 {
        self.n.div_ceil(self.portals)
    }

    /// Event `g`: portals take turns; the i-th event of a portal has
    /// `ts = base + i + jitter`, so ts grows with time at about one per
    /// second per portal; its entity id cycles through a permutation of the
    /// portal's range. Two events of a portal with the same entity are
    /// `entity_range` positions apart, and the jitter (0–2 s) stays below
    /// that distance, so their ts differ: every planned event is distinct
    /// for dedup.
    pub fn event(&self, g: u64) -> Planned {
        let portal = g % self.portals;
        let i = g / self.portals;
        let h = mix(g ^ 0xF111);
        let jitter = h % self.entity_range.min(3);
        let entity =
            ENTITY_BASE + ((i % self.entity_range) * 7919 + portal * 31) % self.entity_range;
        Planned {
            portal: portal as usize,
            event: pick_event(h >> 8),
            entity,
            ts: self.base_ts + i + jitter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn body_is_fixture_shaped_and_decodes() {
        let p = &portals(3, 7)[1];
        let mut rng = Rng::new(1);
        let mut body = Vec::new();
        write_body(
            &mut body,
            p,
            "ONCRMACTIVITYUPDATE",
            999,
            1466439714,
            &mut rng,
        );
        let fixture = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/ONCRMACTIVITYUPDATE-app.form"
        ))
        .unwrap();
        assert_eq!(body.len(), fixture.len(), "same length as the fixture");
        let ev = b24_journal::decode::decode(b24_journal::decode::BodyKind::Form, &body).unwrap();
        assert_eq!(ev.member_id.as_str(), p.member);
        assert_eq!(ev.entity_id.unwrap().as_str(), "999");
    }

    #[test]
    fn fill_plan_is_dedup_unique_in_every_mix() {
        for (n, per_entity) in [(5_000, 1), (5_000, 3), (5_000, 10), (200, 10), (30, 3)] {
            let plan = FillPlan::new(10, n, per_entity);
            let mut seen = HashSet::new();
            let mut entities = HashSet::new();
            for g in 0..plan.n {
                let e = plan.event(g);
                assert!(seen.insert((e.portal, e.event, e.entity, e.ts)), "{g}");
                entities.insert((e.portal, e.entity));
            }
            let per = n as f64 / entities.len() as f64;
            assert!(
                (per - per_entity as f64).abs() <= per_entity as f64 * 0.2 + 0.5,
                "{per_entity} per entity planned, {per} made"
            );
        }
    }

    #[test]
    fn ingest_entities_unique() {
        let ids: HashSet<u64> = (0..200_000).map(ingest_entity).collect();
        assert_eq!(ids.len(), 200_000);
    }
}
