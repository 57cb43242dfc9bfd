//! The config table against the reference, scopes, resolution and a connection's settings.

use super::store::{mode, to_usize};
use super::*;
use crate::proto::ConnectionConfig;
use std::collections::HashSet;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Rows transcribed from the reference table (ids 2-34, 36-60, 103-110, 201-207, 999), and
/// punchline's own (10001).
const ROWS: usize = 75;

#[test]
fn ids_round_trip() {
    for &v in ConfigValue::ALL {
        assert_eq!(ConfigValue::from_id(v.id()), Some(v), "{v:?}");
        assert_eq!(ConfigValue::from_name(v.name()), Some(v), "{v:?}");
    }
    for id in [-1, 0, 1, 35, 61, 102, 111, 200, 208, 998, 1000, i32::MAX] {
        assert_eq!(ConfigValue::from_id(id), None, "{id}");
    }
}

#[test]
fn all_is_complete_and_unique() {
    assert_eq!(ConfigValue::ALL.len(), ROWS);
    let ids: HashSet<i32> = ConfigValue::ALL.iter().map(|v| v.id()).collect();
    assert_eq!(ids.len(), ROWS);
    let names: HashSet<&str> = ConfigValue::ALL.iter().map(|v| v.name()).collect();
    assert_eq!(names.len(), ROWS);
    assert!(ConfigValue::ALL.windows(2).all(|w| w[0].id() < w[1].id()));
    let expected: Vec<i32> = (2..=34)
        .chain(36..=60)
        .chain(103..=110)
        .chain(201..=207)
        .chain([999, 10_001])
        .collect();
    let got: Vec<i32> = ConfigValue::ALL.iter().map(|v| v.id()).collect();
    assert_eq!(got, expected);
}

#[test]
fn reference_ids_and_names() {
    use ConfigValue as V;
    let cases = [
        (V::FakePacketLossSend, 2, "FakePacketLoss_Send"),
        (V::SendBufferSize, 9, "SendBufferSize"),
        (V::NagleTime, 12, "NagleTime"),
        (V::IpAllowWithoutAuth, 23, "IP_AllowWithoutAuth"),
        (V::MtuPacketSize, 32, "MTU_PacketSize"),
        (V::MtuDataSize, 33, "MTU_DataSize"),
        (V::SymmetricConnect, 37, "SymmetricConnect"),
        (V::LocalVirtualPort, 38, "LocalVirtualPort"),
        (V::ConnectionUserData, 40, "ConnectionUserData"),
        (
            V::IpLocalHostAllowWithoutAuth,
            52,
            "IPLocalHost_AllowWithoutAuth",
        ),
        (V::P2pStunServerList, 103, "P2P_STUN_ServerList"),
        (
            V::P2pTransportIceImplementation,
            110,
            "P2P_Transport_ICE_Implementation",
        ),
        (
            V::CallbackConnectionStatusChanged,
            201,
            "Callback_ConnectionStatusChanged",
        ),
        (V::CallbackFakeIpResult, 207, "Callback_FakeIPResult"),
        (V::Ecn, 999, "ECN"),
        (
            V::UnprovenHandshakesMax,
            10_001,
            "Punchline_UnprovenHandshakesMax",
        ),
    ];
    for (v, id, name) in cases {
        assert_eq!(v.id(), id);
        assert_eq!(v.name(), name);
        assert_eq!(v.to_string(), name);
    }
}

#[test]
fn table_is_consistent() {
    for &v in ConfigValue::ALL {
        let i = info(v);
        assert_eq!(i.value, v);
        assert_eq!(i.name, v.name());
        assert_eq!(i.default.data_type(), i.data_type, "{v:?}");
        if let Some(n) = i.default.as_number() {
            assert!(i.min.is_none_or(|m| n >= m), "{v:?} default below min");
            assert!(i.max.is_none_or(|m| n <= m), "{v:?} default above max");
        }
        if i.data_type == ConfigDataType::Ptr {
            assert_eq!(i.default, ConfigData::Ptr(None));
        }
    }
    let read_only: Vec<_> = ConfigValue::ALL
        .iter()
        .filter(|v| info(**v).read_only)
        .collect();
    assert_eq!(read_only, [&ConfigValue::MtuDataSize]);
    assert_eq!(
        info(ConfigValue::ConnectionUserData).data_type,
        ConfigDataType::Int64
    );
    assert_eq!(
        info(ConfigValue::FakePacketLossSend).scope,
        ConfigScope::Global
    );
    assert_eq!(
        info(ConfigValue::CallbackConnectionStatusChanged).scope,
        ConfigScope::Connection
    );
    assert_eq!(
        info(ConfigValue::CallbackAuthStatusChanged).scope,
        ConfigScope::Global
    );
    assert!(!info(ConfigValue::SdrClientDevTicket).applies_to_ip);
    assert!(info(ConfigValue::SendBufferSize).applies_to_ip);
}

#[test]
fn defaults_match_the_protocol() {
    let mut cfg = ConnectionConfig {
        nagle_time: Duration::ZERO,
        mtu_packet_size: 9000,
        unencrypted: 3,
        ..ConnectionConfig::default()
    };
    apply_to_connection(&[], &mut cfg);
    let d = ConnectionConfig::default();
    assert_eq!(cfg.timeout_initial, d.timeout_initial);
    assert_eq!(cfg.timeout_connected, d.timeout_connected);
    assert_eq!(cfg.nagle_time, d.nagle_time);
    assert_eq!(cfg.mtu_packet_size, d.mtu_packet_size);
    assert_eq!(cfg.send_buffer_size, d.send_buffer_size);
    assert_eq!(cfg.recv_buffer_size, d.recv_buffer_size);
    assert_eq!(cfg.recv_buffer_messages, d.recv_buffer_messages);
    assert_eq!(cfg.recv_max_message_size, d.recv_max_message_size);
    assert_eq!(
        cfg.recv_max_segments_per_packet,
        d.recv_max_segments_per_packet
    );
    assert_eq!(cfg.send_rate_min, d.send_rate_min);
    assert_eq!(cfg.send_rate_max, d.send_rate_max);
    assert_eq!(cfg.unencrypted, d.unencrypted);
    assert_eq!(cfg.allow_without_auth, d.allow_without_auth);
    assert_eq!(
        cfg.localhost_allow_without_auth,
        d.localhost_allow_without_auth
    );
}

#[test]
fn set_checks_type() {
    let mut s = ConfigStore::new();
    assert_eq!(
        s.set(ConfigValue::SendBufferSize, Some("big".into())),
        Err(ConfigError::WrongType {
            value: "SendBufferSize",
            expected: ConfigDataType::Int32,
            got: ConfigDataType::String,
        })
    );
    assert!(matches!(
        s.set(ConfigValue::NagleTime, Some(ConfigData::Float(1.0))),
        Err(ConfigError::WrongType { .. })
    ));
    assert!(matches!(
        s.set(ConfigValue::NagleTime, Some(ConfigData::Int64(1))),
        Err(ConfigError::WrongType { .. })
    ));
    // Int32 is accepted for Int64 and Float values, and converted.
    s.set(ConfigValue::ConnectionUserData, Some(7.into()))
        .unwrap();
    assert_eq!(
        s.get(ConfigValue::ConnectionUserData),
        Some(&ConfigData::Int64(7))
    );
    s.set(ConfigValue::FakePacketLossSend, Some(5.into()))
        .unwrap();
    assert_eq!(
        s.get(ConfigValue::FakePacketLossSend),
        Some(&ConfigData::Float(5.0))
    );
    s.set(
        ConfigValue::P2pStunServerList,
        Some("stun.example:3478".into()),
    )
    .unwrap();
    assert_eq!(
        s.get(ConfigValue::P2pStunServerList)
            .and_then(ConfigData::as_str),
        Some("stun.example:3478")
    );
    assert_eq!(s.iter().count(), 3);
    // None clears.
    s.set(ConfigValue::ConnectionUserData, None).unwrap();
    assert_eq!(s.get(ConfigValue::ConnectionUserData), None);
    assert_eq!(s.iter().count(), 2);
}

#[test]
fn set_checks_range() {
    let mut s = ConfigStore::new();
    let err = s.set(ConfigValue::Unencrypted, Some(4.into())).unwrap_err();
    assert_eq!(
        err,
        ConfigError::OutOfRange {
            value: "Unencrypted",
            given: 4.0,
            min: 0.0,
            max: 3.0,
        }
    );
    assert!(err.to_string().contains("Unencrypted"));
    assert!(s.set(ConfigValue::MtuPacketSize, Some(500.into())).is_err());
    assert!(s
        .set(ConfigValue::MtuPacketSize, Some(65_001.into()))
        .is_err());
    assert!(s
        .set(ConfigValue::FakePacketLossSend, Some(100.5f32.into()))
        .is_err());
    assert!(s
        .set(ConfigValue::FakePacketLossSend, Some(f32::NAN.into()))
        .is_err());
    assert!(s
        .set(ConfigValue::LocalVirtualPort, Some((-2).into()))
        .is_err());
    assert!(s.is_empty());
    s.set(ConfigValue::MtuPacketSize, Some(576.into())).unwrap();
    s.set(ConfigValue::LocalVirtualPort, Some((-1).into()))
        .unwrap();
    s.set(ConfigValue::ConnectionUserData, Some(i64::MIN.into()))
        .unwrap();
}

#[test]
fn set_refuses_read_only() {
    let mut s = ConfigStore::new();
    let err = s
        .set(ConfigValue::MtuDataSize, Some(1000.into()))
        .unwrap_err();
    assert_eq!(err, ConfigError::ReadOnly("MTU_DataSize"));
    assert!(err.to_string().contains("MTU_DataSize"));
    assert!(s.set(ConfigValue::MtuDataSize, None).is_err());
}

#[test]
fn scopes() {
    use ConfigScope::*;
    for scope in [Global, SocketsInterface, ListenSocket, Connection] {
        assert_eq!(ConfigScope::from_i32(scope as i32), Some(scope));
        check_scope(ConfigValue::SendBufferSize, scope).unwrap();
        check_scope(ConfigValue::CallbackConnectionStatusChanged, scope).unwrap();
    }
    check_scope(ConfigValue::FakePacketLossSend, Global).unwrap();
    for scope in [SocketsInterface, ListenSocket, Connection] {
        let err = check_scope(ConfigValue::FakePacketLossSend, scope).unwrap_err();
        assert_eq!(
            err,
            ConfigError::BadScope {
                value: "FakePacketLoss_Send",
                scope
            }
        );
        assert!(err.to_string().contains("FakePacketLoss_Send"));
        assert!(check_scope(ConfigValue::CallbackAuthStatusChanged, scope).is_err());
    }
    assert_eq!(ConfigScope::from_i32(0), None);
    assert_eq!(ConfigDataType::from_i32(5), Some(ConfigDataType::Ptr));
    assert_eq!(ConfigDataType::from_i32(6), None);
}

#[test]
fn resolve_inherits() {
    let mut global = ConfigStore::new();
    let listen = ConfigStore::new();
    let mut conn = ConfigStore::new();
    let v = ConfigValue::SendBufferSize;

    // Nothing set anywhere: the default, inherited.
    assert_eq!(
        resolve(v, &[&conn, &listen, &global]),
        (ConfigData::Int32(524_288), GetResult::OkInherited)
    );
    // Asking the defaults themselves.
    assert_eq!(resolve(v, &[]), (ConfigData::Int32(524_288), GetResult::Ok));

    global.set(v, Some(1000.into())).unwrap();
    assert_eq!(
        resolve(v, &[&conn, &listen, &global]),
        (ConfigData::Int32(1000), GetResult::OkInherited)
    );
    assert_eq!(
        resolve(v, &[&global]),
        (ConfigData::Int32(1000), GetResult::Ok)
    );

    conn.set(v, Some(2000.into())).unwrap();
    assert_eq!(
        resolve(v, &[&conn, &listen, &global]),
        (ConfigData::Int32(2000), GetResult::Ok)
    );
    assert_eq!(
        resolve(v, &[&listen, &global]),
        (ConfigData::Int32(1000), GetResult::OkInherited)
    );
}

#[test]
fn mtu_data_size_is_derived() {
    assert_eq!(mtu_data_size(1300), 1271);
    assert_eq!(mtu_data_size(0), 0);
    assert_eq!(
        resolve(ConfigValue::MtuDataSize, &[]),
        (ConfigData::Int32(1423), GetResult::Ok)
    );
    let mut listen = ConfigStore::new();
    listen
        .set(ConfigValue::MtuPacketSize, Some(1000.into()))
        .unwrap();
    let conn = ConfigStore::new();
    assert_eq!(
        resolve(ConfigValue::MtuDataSize, &[&conn, &listen]),
        (ConfigData::Int32(971), GetResult::OkInherited)
    );
}

#[test]
fn apply_maps_units() {
    let mut global = ConfigStore::new();
    let mut conn = ConfigStore::new();
    global
        .set(ConfigValue::TimeoutInitial, Some(1500.into()))
        .unwrap();
    global
        .set(ConfigValue::NagleTime, Some(9999.into()))
        .unwrap();
    conn.set(ConfigValue::NagleTime, Some(2500.into())).unwrap();
    conn.set(ConfigValue::TimeoutConnected, Some(30_000.into()))
        .unwrap();
    conn.set(ConfigValue::MtuPacketSize, Some(1200.into()))
        .unwrap();
    conn.set(ConfigValue::SendRateMin, Some(100_000.into()))
        .unwrap();
    conn.set(ConfigValue::SendRateMax, Some(100_000.into()))
        .unwrap();
    conn.set(ConfigValue::Unencrypted, Some(2.into())).unwrap();
    conn.set(ConfigValue::IpLocalHostAllowWithoutAuth, Some(1.into()))
        .unwrap();
    conn.set(ConfigValue::RecvMaxSegmentsPerPacket, Some(2.into()))
        .unwrap();

    let mut cfg = ConnectionConfig::default();
    apply_to_connection(&[&conn, &global], &mut cfg);
    assert_eq!(cfg.nagle_time, Duration::from_micros(2500));
    assert_eq!(cfg.timeout_initial, Duration::from_millis(1500));
    assert_eq!(cfg.timeout_connected, Duration::from_secs(30));
    assert_eq!(cfg.mtu_packet_size, 1200);
    assert_eq!((cfg.send_rate_min, cfg.send_rate_max), (100_000, 100_000));
    assert_eq!(cfg.unencrypted, 2);
    assert_eq!(cfg.allow_without_auth, 0);
    assert_eq!(cfg.localhost_allow_without_auth, 1);
    assert_eq!(cfg.recv_max_segments_per_packet, 2);
    assert!(cfg.expected_peer.is_none());
}

#[test]
fn apply_clamps() {
    let mut s = ConfigStore::new();
    s.set(ConfigValue::TimeoutInitial, Some(0.into())).unwrap();
    s.set(ConfigValue::NagleTime, Some(0.into())).unwrap();
    let mut cfg = ConnectionConfig::default();
    apply_to_connection(&[&s], &mut cfg);
    assert_eq!(cfg.timeout_initial, Duration::from_millis(1));
    assert_eq!(cfg.nagle_time, Duration::ZERO);
    assert_eq!(mode(-5, 3), 0);
    assert_eq!(mode(7, 2), 2);
    assert_eq!(to_usize(-5, 1), 1);
}

#[test]
fn callbacks() {
    let hits = Arc::new(AtomicI32::new(0));
    let h = hits.clone();
    let cb = CallbackFn::new(move |arg| {
        if let Some(n) = arg.downcast_ref::<i32>() {
            h.fetch_add(*n, Ordering::SeqCst);
        }
    });
    let other = CallbackFn::new(|_| {});
    assert_eq!(cb, cb.clone());
    assert_ne!(cb, other);
    assert_eq!(format!("{cb:?}"), "CallbackFn(..)");

    let mut s = ConfigStore::new();
    s.set(
        ConfigValue::CallbackConnectionStatusChanged,
        Some(cb.clone().into()),
    )
    .unwrap();
    assert!(matches!(
        s.set(ConfigValue::CallbackAuthStatusChanged, Some(1.into())),
        Err(ConfigError::WrongType { .. })
    ));
    let (data, how) = resolve(ConfigValue::CallbackConnectionStatusChanged, &[&s]);
    assert_eq!(how, GetResult::Ok);
    data.as_callback().unwrap().call(&3i32);
    data.as_callback().unwrap().call(&"ignored");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert_eq!(
        resolve(ConfigValue::CallbackAuthStatusChanged, &[&s]).0,
        ConfigData::Ptr(None)
    );
}

#[test]
fn data_accessors() {
    assert_eq!(ConfigData::Int32(3).as_i32(), Some(3));
    assert_eq!(ConfigData::Int32(3).as_i64(), Some(3));
    assert_eq!(ConfigData::Int64(3).as_i32(), None);
    assert_eq!(ConfigData::Float(1.5).as_f32(), Some(1.5));
    assert_eq!(ConfigData::Float(1.5).as_str(), None);
    assert_eq!(ConfigData::Ptr(None).as_callback(), None);
    assert_eq!(
        ConfigData::String(String::new()).data_type(),
        ConfigDataType::String
    );
}
