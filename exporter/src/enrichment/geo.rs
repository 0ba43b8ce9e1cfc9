//! Where a public peer address is, from a MaxMind-format database (`GeoIP2` or `GeoLite2`
//! City, or any database with the same fields) when one is configured. Private,
//! loopback, link-local and multicast addresses are never looked up. Lookups are
//! cached per address (bounded), so a busy peer costs one tree walk per interval at most.
use std::{collections::HashMap, net::IpAddr, path::Path, sync::Arc};

use maxminddb::{Reader, geoip2};

use crate::aggregation::{AddressClass, classify};

#[derive(Debug, thiserror::Error)]
#[error("GeoIP database {path}: {cause}")]
pub struct GeoError {
    path: String,
    cause: maxminddb::MaxMindDbError,
}

/// The spec's `geo.*` attributes of one address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Location {
    /// `geo.country.iso_code`: ISO 3166-1 alpha-2.
    pub country_iso_code: Option<String>,
    /// `geo.region.iso_code`: ISO 3166-2 (country and first subdivision, `NL-NH`).
    pub region_iso_code: Option<String>,
    /// `geo.locality.name`: the city's English name.
    pub locality_name: Option<String>,
}

/// Addresses remembered; past it the cache starts over (lookups are microseconds).
const CACHE_MAX: usize = 65_536;

pub struct GeoIp {
    reader: Reader<Vec<u8>>,
    cache: HashMap<IpAddr, Option<Arc<Location>>>,
}

impl GeoIp {
    pub fn open(path: &Path) -> Result<Self, GeoError> {
        let reader =
            Reader::open_readfile(path).map_err(|cause| GeoError { path: path.display().to_string(), cause })?;
        Ok(Self { reader, cache: HashMap::new() })
    }

    /// The location of a public address; `None` for private ones and unknown ones.
    pub fn locate(&mut self, address: IpAddr) -> Option<Arc<Location>> {
        if classify(address) != AddressClass::Other {
            return None;
        }
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        let reader = &self.reader;
        self.cache.entry(address).or_insert_with(|| lookup(reader, address).map(Arc::new)).clone()
    }
}

fn lookup(reader: &Reader<Vec<u8>>, address: IpAddr) -> Option<Location> {
    let city: geoip2::City<'_> = reader.lookup(address).ok()?.decode().ok()??;
    let country = city.country.iso_code.map(str::to_owned);
    let region = match (&country, city.subdivisions.first().and_then(|s| s.iso_code)) {
        (Some(country), Some(subdivision)) => Some(format!("{country}-{subdivision}")),
        _ => None,
    };
    let location = Location {
        country_iso_code: country,
        region_iso_code: region,
        locality_name: city.city.names.english.map(str::to_owned),
    };
    (location != Location::default()).then_some(location)
}
