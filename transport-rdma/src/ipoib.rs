//! Finding the InfiniBand port behind an IPoIB interface, from sysfs alone (so it is unit-tested
//! over a fake tree). On InfiniBand the GID table holds no IP addresses: the TCP connection's
//! local address belongs to an IPoIB netdev (`ib0`, or a partition child like `ib0.8001`), and
//! that netdev belongs to one port of one device.
//!
//! Two ways, most robust first:
//! 1. The IPoIB hardware address (`/sys/class/net/<netdev>/address`, 20 bytes) ends with the port
//!    GID (GID index 0): the port of an InfiniBand device whose `gids/0` is that GID.
//! 2. Otherwise the device whose PCI function lists the netdev
//!    (`/sys/class/infiniband/<dev>/device/net/<netdev>`), on port `dev_port + 1` (IPoIB sets
//!    `dev_port` to the port number minus one).
//!
//! Either way the netdev must be of type 32 (ARPHRD_INFINIBAND) and the port's `link_layer`
//! InfiniBand. Which netdev carries the address is found in `verbs/device.rs` (getifaddrs).

use std::fs;
use std::net::Ipv6Addr;
use std::path::Path;

/// `ARPHRD_INFINIBAND`: the netdev type of IPoIB interfaces.
const ARPHRD_INFINIBAND: u32 = 32;
/// Bytes of an IPoIB hardware address: 4 of flags and QPN, then the 16-byte port GID.
const IPOIB_ADDR_LEN: usize = 20;

/// An InfiniBand port found for a netdev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IbPort {
    /// The verbs device name (e.g. "mlx5_0").
    pub(crate) device: String,
    /// The port number (from 1).
    pub(crate) port: u8,
}

/// The InfiniBand port whose IPoIB interface is `netdev`, in the sysfs tree at `sys` (normally
/// `/sys`), or why there is none.
pub(crate) fn port_of_netdev(sys: &Path, netdev: &str) -> Result<IbPort, String> {
    let net = sys.join("class/net").join(netdev);
    let kind = read(&net.join("type")).and_then(|t| t.parse::<u32>().ok());
    if kind != Some(ARPHRD_INFINIBAND) {
        let kind = kind.map_or_else(|| "unknown".to_string(), |k| k.to_string());
        return Err(format!("{netdev} is not an IPoIB interface (netdev type {kind}, IPoIB is {ARPHRD_INFINIBAND})"));
    }
    let class = sys.join("class/infiniband");
    let mut devices: Vec<String> = match fs::read_dir(&class) {
        Ok(entries) => entries.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).collect(),
        Err(err) => return Err(format!("{netdev} is IPoIB but {} is unreadable: {err}", class.display())),
    };
    devices.sort();
    if let Some(gid) = read(&net.join("address")).as_deref().and_then(port_gid_of_ipoib_address) {
        for device in &devices {
            for (port, dir) in numbered(&class.join(device).join("ports")) {
                let port_gid = read(&dir.join("gids/0")).and_then(|g| g.parse::<Ipv6Addr>().ok());
                if port_gid == Some(gid) && is_infiniband(&dir) {
                    return Ok(IbPort { device: device.clone(), port });
                }
            }
        }
    }
    let port = read(&net.join("dev_port")).and_then(|p| p.parse::<u8>().ok()).unwrap_or(0).saturating_add(1);
    for device in &devices {
        let dir = class.join(device);
        if dir.join("device/net").join(netdev).exists() && is_infiniband(&dir.join("ports").join(port.to_string())) {
            return Ok(IbPort { device: device.clone(), port });
        }
    }
    Err(format!("no InfiniBand port of {} carries the IPoIB interface {netdev}", class.display()))
}

/// The port GID in an IPoIB hardware address (`80:00:02:08:fe:80:…`, 20 colon-separated bytes).
fn port_gid_of_ipoib_address(text: &str) -> Option<Ipv6Addr> {
    let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16).ok()).collect::<Option<_>>()?;
    let gid: [u8; 16] = bytes.get(IPOIB_ADDR_LEN - 16..).filter(|_| bytes.len() == IPOIB_ADDR_LEN)?.try_into().ok()?;
    Some(Ipv6Addr::from(gid))
}

fn is_infiniband(port_dir: &Path) -> bool {
    read(&port_dir.join("link_layer")).is_some_and(|l| l == "InfiniBand")
}

/// The entries of `dir` whose names are port numbers.
fn numbered(dir: &Path) -> Vec<(u8, std::path::PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<_> =
        entries.flatten().filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path()))).collect();
    out.sort();
    out
}

/// A sysfs attribute, trimmed; `None` if absent, unreadable or empty.
fn read(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A fake `/sys` under the temp dir, removed when dropped.
    struct FakeSys(PathBuf);

    impl FakeSys {
        fn new(name: &str) -> FakeSys {
            let dir = std::env::temp_dir().join(format!("rdma-rpc-ipoib-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("create fake sysfs");
            FakeSys(dir)
        }

        fn write(&self, rel: &str, text: &str) {
            let path = self.0.join(rel);
            fs::create_dir_all(path.parent().expect("has a parent")).expect("create dirs");
            fs::write(path, text).expect("write file");
        }

        fn mkdir(&self, rel: &str) {
            fs::create_dir_all(self.0.join(rel)).expect("create dir");
        }

        /// A two-port HCA (mlx5_0: port 1 GUID ..01, port 2 GUID ..02) and a RoCE device.
        fn fabric(name: &str) -> FakeSys {
            let sys = FakeSys::new(name);
            for port in [1, 2] {
                let base = format!("class/infiniband/mlx5_0/ports/{port}");
                sys.write(&format!("{base}/link_layer"), "InfiniBand\n");
                sys.write(&format!("{base}/gids/0"), &format!("fe80:0000:0000:0000:0002:c903:000a:000{port}\n"));
                sys.write(&format!("{base}/lid"), &format!("0x{port}\n"));
            }
            sys.write("class/infiniband/rxe0/ports/1/link_layer", "Ethernet\n");
            sys.write("class/infiniband/rxe0/ports/1/gids/0", "fe80:0000:0000:0000:0002:c903:000a:0009\n");
            sys.write("class/net/eth0/type", "1\n");
            sys.write("class/net/eth0/address", "52:54:00:12:34:56\n");
            sys
        }
    }

    impl Drop for FakeSys {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_ipoib_hardware_address_names_the_port() {
        let sys = FakeSys::fabric("address");
        sys.write("class/net/ib1/type", "32\n");
        sys.write("class/net/ib1/address", "00:00:10:49:fe:80:00:00:00:00:00:00:00:02:c9:03:00:0a:00:02\n");
        assert_eq!(port_of_netdev(&sys.0, "ib1"), Ok(IbPort { device: "mlx5_0".into(), port: 2 }));
        // A partition child shares the parent's hardware address, so it finds the same port.
        sys.write("class/net/ib1.8001/type", "32\n");
        sys.write("class/net/ib1.8001/address", "00:00:10:4a:fe:80:00:00:00:00:00:00:00:02:c9:03:00:0a:00:02\n");
        assert_eq!(port_of_netdev(&sys.0, "ib1.8001"), Ok(IbPort { device: "mlx5_0".into(), port: 2 }));
    }

    #[test]
    fn without_a_matching_gid_the_device_net_link_and_dev_port_decide() {
        let sys = FakeSys::fabric("devport");
        sys.write("class/net/ib0/type", "32\n");
        sys.write("class/net/ib0/address", "garbage\n");
        sys.write("class/net/ib0/dev_port", "0\n");
        sys.mkdir("class/infiniband/mlx5_0/device/net/ib0");
        assert_eq!(port_of_netdev(&sys.0, "ib0"), Ok(IbPort { device: "mlx5_0".into(), port: 1 }));
        sys.write("class/net/ib0/dev_port", "1\n");
        assert_eq!(port_of_netdev(&sys.0, "ib0"), Ok(IbPort { device: "mlx5_0".into(), port: 2 }));
    }

    #[test]
    fn ethernet_interfaces_and_unknown_ipoib_ports_are_refused_with_reasons() {
        let sys = FakeSys::fabric("refused");
        let err = port_of_netdev(&sys.0, "eth0").expect_err("not IPoIB");
        assert!(err.contains("eth0 is not an IPoIB interface (netdev type 1"), "{err}");
        let err = port_of_netdev(&sys.0, "missing0").expect_err("no such netdev");
        assert!(err.contains("netdev type unknown"), "{err}");
        // An IPoIB netdev whose GID only a RoCE port has (link layer Ethernet) is not matched.
        sys.write("class/net/ib9/type", "32\n");
        sys.write("class/net/ib9/address", "00:00:10:49:fe:80:00:00:00:00:00:00:00:02:c9:03:00:0a:00:09\n");
        let err = port_of_netdev(&sys.0, "ib9").expect_err("no port");
        assert!(err.contains("no InfiniBand port") && err.contains("ib9"), "{err}");
    }

    #[test]
    fn ipoib_addresses_carry_the_port_gid() {
        let gid = port_gid_of_ipoib_address("80:00:02:08:fe:80:00:00:00:00:00:00:00:02:c9:03:00:0a:bc:de");
        assert_eq!(gid, "fe80::2:c903:a:bcde".parse().ok());
        assert_eq!(port_gid_of_ipoib_address("52:54:00:12:34:56"), None);
        assert_eq!(port_gid_of_ipoib_address("zz:00:02:08:fe:80:00:00:00:00:00:00:00:02:c9:03:00:0a:bc:de"), None);
    }
}
