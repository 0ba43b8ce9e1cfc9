use std::net::IpAddr;

/// `flowtel.*.address.class`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    Loopback,
    Private,
    LinkLocal,
    Multicast,
    Other,
}

impl AddressClass {
    pub fn as_str(self) -> &'static str {
        use flowtel_semconv::value;
        match self {
            Self::Loopback => value::LOOPBACK,
            Self::Private => value::PRIVATE,
            Self::LinkLocal => value::LINK_LOCAL,
            Self::Multicast => value::MULTICAST,
            Self::Other => value::OTHER,
        }
    }
}

/// Private means RFC 1918, RFC 6598 shared space (carrier NAT, often pod networks) and
/// IPv6 unique-local (`fc00::/7`).
pub fn classify(addr: IpAddr) -> AddressClass {
    match addr {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                AddressClass::Loopback
            } else if v4.is_private() || (a == 100 && (64..128).contains(&b)) {
                AddressClass::Private
            } else if v4.is_link_local() {
                AddressClass::LinkLocal
            } else if v4.is_multicast() || v4.is_broadcast() {
                AddressClass::Multicast
            } else {
                AddressClass::Other
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_loopback() {
                AddressClass::Loopback
            } else if first & 0xfe00 == 0xfc00 {
                AddressClass::Private
            } else if first & 0xffc0 == 0xfe80 {
                AddressClass::LinkLocal
            } else if v6.is_multicast() {
                AddressClass::Multicast
            } else {
                AddressClass::Other
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let cases = [
            ("127.0.0.1", AddressClass::Loopback),
            ("10.1.2.3", AddressClass::Private),
            ("172.16.0.1", AddressClass::Private),
            ("172.32.0.1", AddressClass::Other),
            ("192.168.1.1", AddressClass::Private),
            ("100.64.0.1", AddressClass::Private),
            ("100.128.0.1", AddressClass::Other),
            ("169.254.1.1", AddressClass::LinkLocal),
            ("224.0.0.251", AddressClass::Multicast),
            ("255.255.255.255", AddressClass::Multicast),
            ("8.8.8.8", AddressClass::Other),
            ("::1", AddressClass::Loopback),
            ("fd00::1", AddressClass::Private),
            ("fe80::1", AddressClass::LinkLocal),
            ("ff02::1", AddressClass::Multicast),
            ("2001:db8::1", AddressClass::Other),
        ];
        for (addr, class) in cases {
            assert_eq!(classify(addr.parse().unwrap()), class, "{addr}");
        }
    }
}
