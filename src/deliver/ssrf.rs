//! The SSRF guard for per-task webhook URLs. A pipeline may name any URL
//! as a task's webhook; unless `delivery.allow_private_networks` is set,
//! taskhook refuses to send to loopback, private, link-local (cloud
//! metadata), CGNAT and other non-public addresses. The check runs on the
//! resolved addresses inside the HTTP client's resolver, so the connection
//! uses exactly the addresses that were checked: DNS cannot be rebound
//! between the check and the request. Configured webhooks are trusted.
//!
//! May call: nothing of taskhook's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// True for addresses on the public internet: everything the IANA
/// special-purpose registries do not mark as not globally reachable, and
/// for IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64,
/// 6to4, Teredo), whatever that IPv4 address is.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], bits: u32) -> bool {
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    // Globally reachable exceptions inside the ranges below.
    const GLOBAL: [([u8; 4], u32); 2] = [
        ([192, 0, 0, 9], 32),  // Port Control Protocol anycast
        ([192, 0, 0, 10], 32), // TURN anycast
    ];
    // The IANA IPv4 special-purpose registry's ranges that are not globally
    // reachable, plus multicast.
    const NOT_GLOBAL: [([u8; 4], u32); 16] = [
        ([0, 0, 0, 0], 8),          // "this network"
        ([10, 0, 0, 0], 8),         // private
        ([100, 64, 0, 0], 10),      // shared address space (CGNAT)
        ([127, 0, 0, 0], 8),        // loopback
        ([169, 254, 0, 0], 16),     // link-local, cloud metadata among them
        ([172, 16, 0, 0], 12),      // private
        ([192, 0, 0, 0], 24),       // IETF protocol assignments, DS-Lite, NAT64 discovery
        ([192, 0, 2, 0], 24),       // documentation (TEST-NET-1)
        ([192, 88, 99, 0], 24),     // deprecated 6to4 relay anycast
        ([192, 168, 0, 0], 16),     // private
        ([198, 18, 0, 0], 15),      // benchmarking
        ([198, 51, 100, 0], 24),    // documentation (TEST-NET-2)
        ([203, 0, 113, 0], 24),     // documentation (TEST-NET-3)
        ([224, 0, 0, 0], 4),        // multicast
        ([240, 0, 0, 0], 4),        // reserved
        ([255, 255, 255, 255], 32), // limited broadcast
    ];
    GLOBAL.iter().any(|(n, b)| in_v4(ip, *n, *b))
        || !NOT_GLOBAL.iter().any(|(n, b)| in_v4(ip, *n, *b))
}

/// The IPv4 address an IPv6 address carries, for the forms that route to
/// it: IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64
/// `64:ff9b::a.b.c.d`, 6to4 `2002:AABB:CCDD::` and Teredo `2001:0::`
/// (whose client address is stored inverted).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = ip.segments();
    let o = ip.octets();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if ip.is_unspecified() || ip.is_loopback() {
        return None;
    }
    if seg[..6] == [0; 6] {
        return Some(last); // IPv4-compatible (deprecated)
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(last); // the well-known NAT64 prefix
    }
    if seg[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])); // 6to4
    }
    if seg[0] == 0x2001 && seg[1] == 0 {
        return Some(Ipv4Addr::from(!u32::from(last))); // Teredo client
    }
    None
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    // Globally reachable exceptions inside 2001::/23.
    let ietf_global = (seg[0] == 0x2001 && seg[1] == 0x1 && seg[2..7] == [0; 5] && (1..=3).contains(&seg[7]))
        || (seg[0] == 0x2001 && seg[1] == 0x3) // AMT
        || (seg[0] == 0x2001 && seg[1] == 0x4 && seg[2] == 0x112) // AS112-v6
        || (seg[0] == 0x2001 && (0x20..0x40).contains(&seg[1])); // ORCHIDv2, drone DETs
    let not_global = ip.is_unspecified()
        || ip.is_loopback()
        || (seg[0] & 0xff00) == 0xff00 // multicast
        || (seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1) // local-use NAT64 64:ff9b:1::/48
        || (seg[0] == 0x100 && seg[1..4] == [0; 3]) // discard-only 100::/64
        || (seg[0] == 0x100 && seg[1..4] == [0, 0, 1]) // dummy prefix 100:0:0:1::/64
        || (seg[0] == 0x2001 && seg[1] < 0x200 && !ietf_global) // IETF protocol assignments 2001::/23
        || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
        || (seg[0] & 0xfff0) == 0x3ff0 // documentation 3fff::/20
        || seg[0] == 0x5f00 // SRv6 SIDs
        || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (seg[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (seg[0] & 0xffc0) == 0xfec0; // site-local fec0::/10 (deprecated)
    !not_global
}

/// Refuses a URL whose host is a literal non-public IP address (such a URL
/// never reaches the resolver).
pub fn check_url(url: &url::Url) -> Result<(), String> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        _ => return Ok(()),
    };
    if is_public(ip) {
        Ok(())
    } else {
        Err(format!(
            "{ip} is not a public address (set delivery.allow_private_networks to allow it)"
        ))
    }
}

/// Why a connection was refused; found in the error chain of a send.
#[derive(Debug)]
pub struct Blocked(pub String);

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Blocked {}

/// A resolver that only ever yields public addresses.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> =
                all.iter().copied().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                let msg = format!(
                    "{host} resolves to no public address (blocked; set delivery.allow_private_networks to allow it)"
                );
                return Err(Box::new(Blocked(msg)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every range of the IANA IPv4 and IPv6 special-purpose address
    /// registries (and multicast), with an address inside it and whether
    /// it is globally reachable.
    #[test]
    fn every_special_purpose_range_is_judged_as_the_registries_say() {
        let table: &[(&str, &str, bool)] = &[
            ("0.0.0.0/8", "0.1.2.3", false),
            ("10.0.0.0/8", "10.1.2.3", false),
            ("100.64.0.0/10", "100.100.1.1", false),
            ("127.0.0.0/8", "127.0.0.1", false),
            ("169.254.0.0/16", "169.254.169.254", false),
            ("172.16.0.0/12", "172.31.255.1", false),
            ("192.0.0.0/24", "192.0.0.1", false),
            ("192.0.0.0/29 DS-Lite", "192.0.0.6", false),
            ("192.0.0.8/32", "192.0.0.8", false),
            ("192.0.0.9/32 PCP anycast", "192.0.0.9", true),
            ("192.0.0.10/32 TURN anycast", "192.0.0.10", true),
            ("192.0.0.170/32 NAT64 discovery", "192.0.0.170", false),
            ("192.0.0.171/32 NAT64 discovery", "192.0.0.171", false),
            ("192.0.2.0/24", "192.0.2.55", false),
            ("192.31.196.0/24 AS112", "192.31.196.1", true),
            ("192.52.193.0/24 AMT", "192.52.193.1", true),
            ("192.88.99.0/24", "192.88.99.1", false),
            ("192.168.0.0/16", "192.168.1.1", false),
            ("192.175.48.0/24 AS112", "192.175.48.1", true),
            ("198.18.0.0/15", "198.19.0.1", false),
            ("198.51.100.0/24", "198.51.100.7", false),
            ("203.0.113.0/24", "203.0.113.9", false),
            ("224.0.0.0/4 multicast", "239.1.1.1", false),
            ("240.0.0.0/4", "250.1.1.1", false),
            ("255.255.255.255/32", "255.255.255.255", false),
            ("public", "8.8.8.8", true),
            ("public beside CGNAT", "100.128.0.1", true),
            ("::1/128", "::1", false),
            ("::/128", "::", false),
            ("::ffff:0:0/96 private", "::ffff:10.0.0.1", false),
            ("::ffff:0:0/96 public", "::ffff:8.8.8.8", true),
            ("::/96 IPv4-compatible private", "::127.0.0.1", false),
            ("::/96 IPv4-compatible metadata", "::169.254.169.254", false),
            ("::/96 IPv4-compatible public", "::8.8.8.8", true),
            ("64:ff9b::/96 NAT64 public", "64:ff9b::8.8.8.8", true),
            ("64:ff9b::/96 NAT64 private", "64:ff9b::10.0.0.1", false),
            (
                "64:ff9b:1::/48 local-use NAT64",
                "64:ff9b:1::8.8.8.8",
                false,
            ),
            ("100::/64", "100::1", false),
            ("100:0:0:1::/64", "100:0:0:1::1", false),
            ("2001::/23", "2001:100::1", false),
            ("2001:1::1/128 PCP anycast", "2001:1::1", true),
            ("2001:1::2/128 TURN anycast", "2001:1::2", true),
            ("2001:1::3/128 DNS-SD", "2001:1::3", true),
            ("2001:2::/48 benchmarking", "2001:2::1", false),
            ("2001:3::/32 AMT", "2001:3::1", true),
            ("2001:4:112::/48 AS112-v6", "2001:4:112::1", true),
            ("2001:10::/28 ORCHID", "2001:10::1", false),
            ("2001:20::/28 ORCHIDv2", "2001:20::1", true),
            ("2001:30::/28 drone DETs", "2001:30::1", true),
            ("2001:db8::/32", "2001:db8::1", false),
            // Teredo: the client's IPv4 address, inverted, in the last 32 bits.
            (
                "2001::/32 Teredo to 127.0.0.1",
                "2001:0:4136:e378:8000:63bf:80ff:fffe",
                false,
            ),
            (
                "2001::/32 Teredo to 8.8.8.8",
                "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
                true,
            ),
            ("2002::/16 6to4 to 10.0.0.1", "2002:a00:1::1", false),
            (
                "2002::/16 6to4 to 169.254.169.254",
                "2002:a9fe:a9fe::1",
                false,
            ),
            ("2002::/16 6to4 to 8.8.8.8", "2002:808:808::1", true),
            ("2620:4f:8000::/48 AS112", "2620:4f:8000::1", true),
            ("3fff::/20", "3fff:fff::1", false),
            ("5f00::/16 SRv6", "5f00::1", false),
            ("fc00::/7", "fd00:ec2::254", false),
            ("fe80::/10", "fe80::1", false),
            ("fec0::/10 site-local", "fec0::1", false),
            ("ff00::/8 multicast", "ff02::1", false),
            ("public v6", "2606:4700:4700::1111", true),
        ];
        for (range, ip, public) in table {
            let addr: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}"));
            assert_eq!(is_public(addr), *public, "{range}: {ip}");
        }
    }

    #[test]
    fn literal_urls_are_checked() {
        let u = |s: &str| url::Url::parse(s).unwrap();
        assert!(check_url(&u("http://169.254.169.254/latest/meta-data")).is_err());
        assert!(check_url(&u("http://[::1]:8080/")).is_err());
        assert!(check_url(&u("https://8.8.8.8/hook")).is_ok());
        assert!(check_url(&u("https://hooks.example.com/x")).is_ok());
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_private_addresses() {
        let err = PublicOnly
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost is refused");
        assert!(err.to_string().contains("no public address"), "{err}");
    }
}
