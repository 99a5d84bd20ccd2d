//! The MySQL client/server protocol, server side: packets, the v10 handshake with
//! `mysql_native_password` and `caching_sha2_password` (its fast path; other plugins are
//! switched to native), the text protocol (`COM_QUERY`, `COM_INIT_DB`, `COM_PING`,
//! `COM_QUIT`) and the binary protocol of prepared statements.
//!
//! Written here rather than taken from opensrv-mysql: its last release (0.7.0) has an unfixed
//! use-after-free in its packet reader and accepts any password unless the embedder checks
//! the scramble; the protocol subset a database front needs is small and fully tested below
//! with real clients (see docs/db.md).

use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest payload in one packet; longer payloads continue in the next packets.
const MAX_PAYLOAD: usize = 0xFF_FFFF;

/// Capability flags this server offers.
pub mod capability {
    /// Long passwords.
    pub const LONG_PASSWORD: u32 = 0x0000_0001;
    /// Found rows instead of affected rows.
    pub const FOUND_ROWS: u32 = 0x0000_0002;
    /// Long column flags.
    pub const LONG_FLAG: u32 = 0x0000_0004;
    /// A database can be named at connect.
    pub const CONNECT_WITH_DB: u32 = 0x0000_0008;
    /// The 4.1 protocol.
    pub const PROTOCOL_41: u32 = 0x0000_0200;
    /// Transactions: status flags in OK packets.
    pub const TRANSACTIONS: u32 = 0x0000_2000;
    /// 4.1 authentication.
    pub const SECURE_CONNECTION: u32 = 0x0000_8000;
    /// Several statements in one COM_QUERY.
    pub const MULTI_STATEMENTS: u32 = 0x0001_0000;
    /// Several result sets.
    pub const MULTI_RESULTS: u32 = 0x0002_0000;
    /// Pluggable authentication.
    pub const PLUGIN_AUTH: u32 = 0x0008_0000;
    /// Connection attributes.
    pub const CONNECT_ATTRS: u32 = 0x0010_0000;
    /// Length-encoded auth response.
    pub const PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 0x0020_0000;
    /// OK packets instead of EOF packets.
    pub const DEPRECATE_EOF: u32 = 0x0100_0000;
}

/// Status flag: autocommit is on.
pub const STATUS_AUTOCOMMIT: u16 = 0x0002;
/// Status flag: a transaction is open.
pub const STATUS_IN_TRANS: u16 = 0x0001;

/// A protocol failure: the connection cannot continue.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed or closed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The client sent something that is not the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A logical packet longer than the connection's limit (`max_allowed_packet` once logged
    /// in, [`PRE_AUTH_PACKET_LIMIT`] before): nothing past the limit is read or kept.
    #[error("a packet longer than {limit} bytes")]
    TooLarge {
        /// The limit in force.
        limit: usize,
    },
}

/// The longest packet read before a client has logged in. A handshake response carries a
/// user name, a scramble, a database and connection attributes: a few hundred bytes, at most
/// a few kilobytes. A larger one is refused before it is buffered.
pub const PRE_AUTH_PACKET_LIMIT: usize = 64 * 1024;

/// Packet reader and writer over one connection, tracking sequence ids. Written packets are
/// buffered until [`Conn::flush`], so a whole answer leaves in as few segments as possible.
pub struct Conn<S> {
    stream: S,
    seq: u8,
    out: Vec<u8>,
    /// The longest logical packet [`Conn::read`] accepts.
    limit: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Wraps a connected stream.
    /// Wraps a connected stream, reading packets of at most [`PRE_AUTH_PACKET_LIMIT`] bytes
    /// until [`Conn::set_packet_limit`] raises it.
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            seq: 0,
            out: Vec::new(),
            limit: PRE_AUTH_PACKET_LIMIT,
        }
    }

    /// Sets the longest logical packet accepted from now on (`max_allowed_packet`).
    pub fn set_packet_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Reads one logical packet (joining continuation packets). Memory grows with the bytes
    /// that actually arrive, never with what a header announces, and a packet whose length
    /// passes the limit is refused before its body is read.
    pub async fn read(&mut self) -> Result<Vec<u8>, WireError> {
        let mut payload = Vec::new();
        loop {
            let mut header = [0u8; 4];
            self.stream.read_exact(&mut header).await?;
            let len =
                usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
            if header[3] != self.seq {
                return Err(WireError::Protocol(format!(
                    "packet sequence {} where {} was expected",
                    header[3], self.seq
                )));
            }
            self.seq = self.seq.wrapping_add(1);
            if payload.len() + len > self.limit {
                return Err(WireError::TooLarge { limit: self.limit });
            }
            let got = (&mut self.stream)
                .take(len as u64)
                .read_to_end(&mut payload)
                .await?;
            if got < len {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            if len < MAX_PAYLOAD {
                return Ok(payload);
            }
        }
    }

    /// Writes one logical packet (splitting it when long) without flushing; a large buffer
    /// is sent on the way.
    pub async fn write(&mut self, payload: &[u8]) -> Result<(), WireError> {
        let mut rest = payload;
        loop {
            let chunk = &rest[..rest.len().min(MAX_PAYLOAD)];
            let len = chunk.len();
            let header = [len as u8, (len >> 8) as u8, (len >> 16) as u8, self.seq];
            self.seq = self.seq.wrapping_add(1);
            self.out.extend_from_slice(&header);
            self.out.extend_from_slice(chunk);
            rest = &rest[len..];
            if len < MAX_PAYLOAD {
                break;
            }
        }
        if self.out.len() >= 1 << 20 {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Sends what was written.
    pub async fn flush(&mut self) -> Result<(), WireError> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        self.stream.flush().await.map_err(Into::into)
    }

    /// Starts a new command exchange (the client's command packet has sequence 0).
    pub fn reset_sequence(&mut self) {
        self.seq = 0;
    }
}

/// Appends a length-encoded integer.
pub fn put_lenenc_int(out: &mut Vec<u8>, n: u64) {
    match n {
        0..=250 => out.push(n as u8),
        251..=0xFFFF => {
            out.push(0xFC);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xFF_FFFF => {
            out.push(0xFD);
            out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xFE);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

/// Appends a length-encoded string.
pub fn put_lenenc_str(out: &mut Vec<u8>, s: &[u8]) {
    put_lenenc_int(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// A cursor over a received payload.
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads from the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .ok_or_else(|| WireError::Protocol("packet shorter than its fields".into()))?;
        let slice = &self.data[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize) -> Result<(), WireError> {
        self.take(n).map(drop)
    }

    /// A NUL-terminated string.
    pub fn nul_str(&mut self) -> Result<&'a [u8], WireError> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| WireError::Protocol("string without its NUL terminator".into()))?;
        self.pos += end + 1;
        Ok(&rest[..end])
    }

    /// A length-encoded integer.
    pub fn lenenc_int(&mut self) -> Result<u64, WireError> {
        Ok(match self.u8()? {
            n @ 0..=250 => u64::from(n),
            0xFC => {
                let b = self.take(2)?;
                u64::from(u16::from_le_bytes([b[0], b[1]]))
            }
            0xFD => {
                let b = self.take(3)?;
                u64::from(b[0]) | u64::from(b[1]) << 8 | u64::from(b[2]) << 16
            }
            0xFE => {
                let b = self.take(8)?;
                u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
            }
            other => {
                return Err(WireError::Protocol(format!(
                    "invalid length-encoded integer prefix {other:#x}"
                )));
            }
        })
    }

    /// `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        self.take(n)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        let rest = &self.data[self.pos..];
        self.pos = self.data.len();
        rest
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }
}

/// The server's greeting.
pub fn handshake(
    connection_id: u32,
    server_version: &str,
    scramble: &[u8; 20],
    capabilities: u32,
) -> Vec<u8> {
    let mut out = vec![10];
    out.extend_from_slice(server_version.as_bytes());
    out.push(0);
    out.extend_from_slice(&connection_id.to_le_bytes());
    out.extend_from_slice(&scramble[..8]);
    out.push(0);
    out.extend_from_slice(&(capabilities as u16).to_le_bytes());
    out.push(255); // utf8mb4_0900_ai_ci
    out.extend_from_slice(&STATUS_AUTOCOMMIT.to_le_bytes());
    out.extend_from_slice(&((capabilities >> 16) as u16).to_le_bytes());
    out.push(21);
    out.extend_from_slice(&[0; 10]);
    out.extend_from_slice(&scramble[8..]);
    out.push(0);
    out.extend_from_slice(b"mysql_native_password\0");
    out
}

/// What the client answered to the greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeResponse {
    /// The client's capability flags.
    pub capabilities: u32,
    /// The user name.
    pub user: String,
    /// The scrambled password.
    pub auth_response: Vec<u8>,
    /// The database named at connect, if any.
    pub database: Option<String>,
    /// The authentication plugin the client used.
    pub plugin: String,
}

/// Parses a HandshakeResponse41.
pub fn parse_handshake_response(payload: &[u8]) -> Result<HandshakeResponse, WireError> {
    let mut r = Reader::new(payload);
    let capabilities = r.u32()?;
    if capabilities & capability::PROTOCOL_41 == 0 {
        return Err(WireError::Protocol(
            "clients older than protocol 4.1 are not supported".into(),
        ));
    }
    r.skip(4 + 1 + 23)?;
    let user = String::from_utf8_lossy(r.nul_str()?).into_owned();
    let auth_response = if capabilities & capability::PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
        let n = r.lenenc_int()? as usize;
        r.bytes(n)?.to_vec()
    } else {
        let n = usize::from(r.u8()?);
        r.bytes(n)?.to_vec()
    };
    let database = if capabilities & capability::CONNECT_WITH_DB != 0 && !r.is_empty() {
        Some(String::from_utf8_lossy(r.nul_str()?).into_owned()).filter(|d| !d.is_empty())
    } else {
        None
    };
    let plugin = if capabilities & capability::PLUGIN_AUTH != 0 && !r.is_empty() {
        String::from_utf8_lossy(r.nul_str()?).into_owned()
    } else {
        "mysql_native_password".into()
    };
    Ok(HandshakeResponse {
        capabilities,
        user,
        auth_response,
        database,
        plugin,
    })
}

/// `mysql_native_password`: SHA1(password) XOR SHA1(scramble ‖ SHA1(SHA1(password))).
pub fn native_password_scramble(password: &[u8], scramble: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let stage1 = Sha1::digest(password);
    let stage2 = Sha1::digest(stage1);
    let mut hasher = Sha1::new();
    hasher.update(scramble);
    hasher.update(stage2);
    let mask = hasher.finalize();
    stage1.iter().zip(mask.iter()).map(|(a, b)| a ^ b).collect()
}

/// `caching_sha2_password`'s fast path: SHA256(password) XOR
/// SHA256(SHA256(SHA256(password)) ‖ scramble).
pub fn caching_sha2_scramble(password: &[u8], scramble: &[u8]) -> Vec<u8> {
    use sha2::{Digest as _, Sha256};
    if password.is_empty() {
        return Vec::new();
    }
    let stage1 = Sha256::digest(password);
    let stage2 = Sha256::digest(stage1);
    let mut hasher = Sha256::new();
    hasher.update(stage2);
    hasher.update(scramble);
    let mask = hasher.finalize();
    stage1.iter().zip(mask.iter()).map(|(a, b)| a ^ b).collect()
}

/// Constant-time check of a client's `caching_sha2_password` fast-path response. The server
/// holds the password itself, so every login takes the fast path (no RSA or TLS exchange).
pub fn check_caching_sha2_password(password: &[u8], scramble: &[u8], response: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    let response = response.strip_suffix(&[0]).unwrap_or(response);
    let expected = caching_sha2_scramble(password, scramble);
    expected.len() == response.len() && bool::from(expected.ct_eq(response))
}

/// The `AuthMoreData` packet `caching_sha2_password` sends when the fast path succeeded.
pub const FAST_AUTH_SUCCESS: [u8; 2] = [0x01, 0x03];

/// Constant-time check of a client's native-password response.
pub fn check_native_password(password: &[u8], scramble: &[u8], response: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    let expected = native_password_scramble(password, scramble);
    expected.len() == response.len() && bool::from(expected.ct_eq(response))
}

/// An OK packet.
pub fn ok(affected_rows: u64, last_insert_id: u64, status: u16, info: &str) -> Vec<u8> {
    let mut out = vec![0x00];
    put_lenenc_int(&mut out, affected_rows);
    put_lenenc_int(&mut out, last_insert_id);
    out.extend_from_slice(&status.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(info.as_bytes());
    out
}

/// An ERR packet.
pub fn err(code: u16, sqlstate: &str, message: &str) -> Vec<u8> {
    let mut out = vec![0xFF];
    out.extend_from_slice(&code.to_le_bytes());
    out.push(b'#');
    out.extend_from_slice(&sqlstate.as_bytes()[..5.min(sqlstate.len())]);
    out.extend_from_slice(message.as_bytes());
    out
}

/// The end of a result set: an EOF packet, or an OK packet with the EOF header when the
/// client asked for `DEPRECATE_EOF`.
pub fn end_of_rows(deprecate_eof: bool, status: u16) -> Vec<u8> {
    if deprecate_eof {
        let mut out = ok(0, 0, status, "");
        out[0] = 0xFE;
        out
    } else {
        let mut out = vec![0xFE, 0, 0];
        out.extend_from_slice(&status.to_le_bytes());
        out
    }
}

/// MySQL column types used in result sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ColumnType {
    /// DECIMAL.
    NewDecimal = 0xF6,
    /// INT.
    Long = 0x03,
    /// BIGINT.
    LongLong = 0x08,
    /// DOUBLE.
    Double = 0x05,
    /// DATETIME.
    DateTime = 0x0C,
    /// DATE.
    Date = 0x0A,
    /// BLOB/TEXT.
    Blob = 0xFC,
    /// VARCHAR.
    VarString = 0xFD,
}

/// A column definition (text protocol).
pub fn column_definition(
    schema: &str,
    table: &str,
    name: &str,
    kind: ColumnType,
    binary: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    for part in ["def", schema, table, table, name, name] {
        put_lenenc_str(&mut out, part.as_bytes());
    }
    out.push(0x0C);
    let charset: u16 = if binary
        || matches!(
            kind,
            ColumnType::Long | ColumnType::LongLong | ColumnType::Double | ColumnType::NewDecimal
        ) {
        63
    } else {
        255
    };
    out.extend_from_slice(&charset.to_le_bytes());
    out.extend_from_slice(
        &(if matches!(kind, ColumnType::Blob) {
            0xFFFF_FFFFu32
        } else {
            1024u32
        })
        .to_le_bytes(),
    );
    out.push(kind as u8);
    out.extend_from_slice(&(if binary { 0x0080u16 } else { 0 }).to_le_bytes());
    out.push(if matches!(kind, ColumnType::Double) {
        31
    } else {
        0
    });
    out.extend_from_slice(&[0, 0]);
    out
}

/// The MySQL column type for a declared (MySQL) type name, or for a value when undeclared.
pub fn column_type(declared: Option<&str>, sample: Option<&rusqlite::types::Value>) -> ColumnType {
    if let Some(declared) = declared {
        let d = declared.to_ascii_uppercase();
        let base = d.split(['(', ' ']).next().unwrap_or_default();
        return match base {
            "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "INTEGER" => ColumnType::Long,
            "BIGINT" => ColumnType::LongLong,
            "FLOAT" | "DOUBLE" | "REAL" => ColumnType::Double,
            "DECIMAL" | "NUMERIC" => ColumnType::NewDecimal,
            "DATETIME" | "TIMESTAMP" => ColumnType::DateTime,
            "DATE" => ColumnType::Date,
            "BLOB" | "TINYBLOB" | "MEDIUMBLOB" | "LONGBLOB" | "TEXT" | "TINYTEXT"
            | "MEDIUMTEXT" | "LONGTEXT" => ColumnType::Blob,
            _ => ColumnType::VarString,
        };
    }
    match sample {
        Some(rusqlite::types::Value::Integer(_)) => ColumnType::LongLong,
        Some(rusqlite::types::Value::Real(_)) => ColumnType::Double,
        Some(rusqlite::types::Value::Blob(_)) => ColumnType::Blob,
        _ => ColumnType::VarString,
    }
}

/// A text-protocol row.
pub fn text_row(values: &[rusqlite::types::Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for value in values {
        match value {
            rusqlite::types::Value::Null => out.push(0xFB),
            rusqlite::types::Value::Integer(n) => {
                put_lenenc_str(&mut out, n.to_string().as_bytes())
            }
            rusqlite::types::Value::Real(f) => put_lenenc_str(&mut out, f.to_string().as_bytes()),
            rusqlite::types::Value::Text(t) => put_lenenc_str(&mut out, t.as_bytes()),
            rusqlite::types::Value::Blob(b) => put_lenenc_str(&mut out, b),
        }
    }
    out
}

/// Column types for the binary protocol: the declared type where every value fits it, else a
/// string; dates travel as strings (SQLite keeps them as text).
pub fn binary_kinds(
    columns: usize,
    declared: &[Option<String>],
    rows: &[Vec<rusqlite::types::Value>],
) -> Vec<ColumnType> {
    use rusqlite::types::Value;
    (0..columns)
        .map(|i| {
            let sample = rows
                .iter()
                .map(|r| &r[i])
                .find(|v| !matches!(v, Value::Null));
            let kind = column_type(declared.get(i).and_then(|d| d.as_deref()), sample);
            let values = || {
                rows.iter()
                    .map(|r| &r[i])
                    .filter(|v| !matches!(v, Value::Null))
            };
            match kind {
                ColumnType::Long
                    if values()
                        .all(|v| matches!(v, Value::Integer(n) if i32::try_from(*n).is_ok())) =>
                {
                    ColumnType::Long
                }
                ColumnType::Long | ColumnType::LongLong
                    if values().all(|v| matches!(v, Value::Integer(_))) =>
                {
                    ColumnType::LongLong
                }
                ColumnType::Double
                    if values().all(|v| matches!(v, Value::Real(_) | Value::Integer(_))) =>
                {
                    ColumnType::Double
                }
                ColumnType::Blob => ColumnType::Blob,
                _ => ColumnType::VarString,
            }
        })
        .collect()
}

/// A binary-protocol row, each value encoded as its column's type.
pub fn binary_row(values: &[rusqlite::types::Value], kinds: &[ColumnType]) -> Vec<u8> {
    use rusqlite::types::Value;
    let mut out = vec![0x00];
    let mut bitmap = vec![0u8; (values.len() + 7 + 2) / 8];
    for (i, v) in values.iter().enumerate() {
        if matches!(v, Value::Null) {
            bitmap[(i + 2) / 8] |= 1 << ((i + 2) % 8);
        }
    }
    out.extend_from_slice(&bitmap);
    for (v, kind) in values.iter().zip(kinds) {
        match (v, kind) {
            (Value::Null, _) => {}
            (Value::Integer(n), ColumnType::Long) => {
                out.extend_from_slice(&(*n as i32).to_le_bytes())
            }
            (Value::Integer(n), ColumnType::LongLong) => out.extend_from_slice(&n.to_le_bytes()),
            (Value::Integer(n), ColumnType::Double) => {
                out.extend_from_slice(&(*n as f64).to_le_bytes())
            }
            (Value::Real(f), ColumnType::Double) => out.extend_from_slice(&f.to_le_bytes()),
            (Value::Integer(n), _) => put_lenenc_str(&mut out, n.to_string().as_bytes()),
            (Value::Real(f), _) => put_lenenc_str(&mut out, f.to_string().as_bytes()),
            (Value::Text(t), _) => put_lenenc_str(&mut out, t.as_bytes()),
            (Value::Blob(b), _) => put_lenenc_str(&mut out, b),
        }
    }
    out
}

/// COM_STMT_PREPARE's first answer.
pub fn prepare_ok(statement_id: u32, columns: usize, params: usize) -> Vec<u8> {
    let mut out = vec![0x00];
    out.extend_from_slice(&statement_id.to_le_bytes());
    out.extend_from_slice(&(columns as u16).to_le_bytes());
    out.extend_from_slice(&(params as u16).to_le_bytes());
    out.push(0);
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// Decodes COM_STMT_EXECUTE's parameters (after the statement id, flags and iteration count).
/// `types` carries the types sent with an earlier execution, as clients may send them once.
pub fn decode_params(
    r: &mut Reader<'_>,
    count: usize,
    types: &mut Vec<(u8, bool)>,
) -> Result<Vec<rusqlite::types::Value>, WireError> {
    use rusqlite::types::Value;
    if count == 0 {
        return Ok(Vec::new());
    }
    let bitmap = r.bytes(count.div_ceil(8))?.to_vec();
    if r.u8()? == 1 {
        types.clear();
        for _ in 0..count {
            let t = r.bytes(2)?;
            types.push((t[0], t[1] & 0x80 != 0));
        }
    }
    if types.len() != count {
        return Err(WireError::Protocol(
            "parameter types were never sent".into(),
        ));
    }
    let mut values = Vec::with_capacity(count);
    for (i, &(kind, unsigned)) in types.iter().enumerate() {
        if bitmap[i / 8] & (1 << (i % 8)) != 0 {
            values.push(Value::Null);
            continue;
        }
        let int = |b: &[u8]| -> i64 {
            let mut buf = [0u8; 8];
            buf[..b.len()].copy_from_slice(b);
            let raw = u64::from_le_bytes(buf);
            if unsigned || b.len() == 8 {
                raw as i64
            } else {
                let shift = 64 - 8 * b.len() as u32;
                ((raw << shift) as i64) >> shift
            }
        };
        let value = match kind {
            0x01 => Value::Integer(int(r.bytes(1)?)),
            0x02 | 0x0D => Value::Integer(int(r.bytes(2)?)),
            0x03 | 0x09 => Value::Integer(int(r.bytes(4)?)),
            0x08 => Value::Integer(int(r.bytes(8)?)),
            0x04 => {
                let b = r.bytes(4)?;
                Value::Real(f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            }
            0x05 => {
                let b = r.bytes(8)?;
                Value::Real(f64::from_le_bytes([
                    b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
                ]))
            }
            0x06 => Value::Null,
            0x07 | 0x0A | 0x0C => {
                let len = usize::from(r.u8()?);
                let b = r.bytes(len)?;
                let (y, mo, d) = if len >= 4 {
                    (u16::from_le_bytes([b[0], b[1]]), b[2], b[3])
                } else {
                    (0, 0, 0)
                };
                let (h, mi, s) = if len >= 7 {
                    (b[4], b[5], b[6])
                } else {
                    (0, 0, 0)
                };
                let micros = if len >= 11 {
                    u32::from_le_bytes([b[7], b[8], b[9], b[10]])
                } else {
                    0
                };
                let mut text = format!("{y:04}-{mo:02}-{d:02}");
                if kind != 0x0A {
                    text.push_str(&format!(" {h:02}:{mi:02}:{s:02}"));
                    if micros > 0 {
                        text.push_str(&format!(".{micros:06}"));
                    }
                }
                Value::Text(text)
            }
            0x0F | 0xF5 | 0xF6 | 0xF7 | 0xF8 | 0xF9 | 0xFA | 0xFB | 0xFC | 0xFD | 0xFE | 0x10 => {
                let len = r.lenenc_int()? as usize;
                let bytes = r.bytes(len)?;
                match std::str::from_utf8(bytes) {
                    Ok(text) if !matches!(kind, 0xF9..=0xFC) => Value::Text(text.to_owned()),
                    _ => Value::Blob(bytes.to_vec()),
                }
            }
            other => {
                return Err(WireError::Protocol(format!(
                    "parameter type {other:#04x} is not supported"
                )));
            }
        };
        values.push(value);
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenenc_integers_round_trip_at_every_width() {
        for n in [
            0u64,
            250,
            251,
            0xFFFF,
            0x1_0000,
            0xFF_FFFF,
            0x100_0000,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_lenenc_int(&mut out, n);
            assert_eq!(Reader::new(&out).lenenc_int().expect("decodes"), n);
        }
        assert!(Reader::new(&[0xFF]).lenenc_int().is_err());
        assert!(
            Reader::new(&[0xFC, 1]).lenenc_int().is_err(),
            "truncated input is an error, not a panic"
        );
    }

    #[test]
    fn caching_sha2_matches_the_published_algorithm() {
        // The construction MySQL documents for caching_sha2_password's scramble, recomputed
        // step by step here from SHA-256 alone.
        use sha2::{Digest as _, Sha256};
        let scramble = b"0123456789abcdefghij";
        let response = caching_sha2_scramble(b"secret", scramble);
        let p1 = Sha256::digest(b"secret");
        let p2 = Sha256::digest(p1);
        let mask = Sha256::digest([p2.as_slice(), scramble].concat());
        let expected: Vec<u8> = p1.iter().zip(mask.iter()).map(|(a, b)| a ^ b).collect();
        assert_eq!(response, expected);
        assert!(check_caching_sha2_password(b"secret", scramble, &response));
        assert!(!check_caching_sha2_password(b"Secret", scramble, &response));
        assert!(check_caching_sha2_password(b"", scramble, b""));
    }

    #[test]
    fn native_password_matches_the_published_algorithm() {
        let scramble = b"12345678901234567890";
        let response = native_password_scramble(b"secret", scramble);
        assert_eq!(response.len(), 20);
        assert!(check_native_password(b"secret", scramble, &response));
        assert!(!check_native_password(b"Secret", scramble, &response));
        assert!(
            check_native_password(b"", scramble, &[]),
            "an empty password sends an empty response"
        );
    }

    #[tokio::test]
    async fn long_packets_split_and_join() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (mut writer, mut reader) = (Conn::new(a), Conn::new(b));
        reader.set_packet_limit(64 << 20);
        let payload = vec![7u8; MAX_PAYLOAD + 10];
        let sent = payload.clone();
        let writing = tokio::spawn(async move {
            writer.write(&sent).await.expect("write");
            writer.flush().await.expect("flush");
        });
        assert_eq!(reader.read().await.expect("read"), payload);
        writing.await.expect("join");
    }

    #[tokio::test]
    async fn a_packet_past_the_limit_is_refused_from_its_header_alone() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut reader = Conn::new(b);
        // A 16 MB packet announced before login, and a continuation chain past the limit
        // after it: refused without waiting for (or buffering) the body.
        a.write_all(&[0xff, 0xff, 0xff, 0x00])
            .await
            .expect("header");
        assert!(matches!(
            reader.read().await,
            Err(WireError::TooLarge { limit }) if limit == PRE_AUTH_PACKET_LIMIT
        ));
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let mut reader = Conn::new(b);
        reader.set_packet_limit(100_000);
        let writing = tokio::spawn(async move {
            let mut writer = Conn::new(&mut a);
            let _ = writer.write(&vec![1u8; 200_000]).await;
            let _ = writer.flush().await;
        });
        assert!(matches!(
            reader.read().await,
            Err(WireError::TooLarge { limit: 100_000 })
        ));
        drop(reader);
        let _ = writing.await;
    }

    #[test]
    fn truncated_handshake_responses_are_refused_not_panicked_on() {
        let mut good = Vec::new();
        good.extend_from_slice(
            &(capability::PROTOCOL_41 | capability::SECURE_CONNECTION | capability::PLUGIN_AUTH)
                .to_le_bytes(),
        );
        good.extend_from_slice(&[0; 4 + 1 + 23]);
        good.extend_from_slice(b"app\0");
        good.push(20);
        good.extend_from_slice(&[1; 20]);
        good.extend_from_slice(b"mysql_native_password\0");
        let parsed = parse_handshake_response(&good).expect("parses");
        assert_eq!(
            (
                parsed.user.as_str(),
                parsed.auth_response.len(),
                parsed.plugin.as_str()
            ),
            ("app", 20, "mysql_native_password")
        );
        for cut in 0..good.len() - 1 {
            let _ = parse_handshake_response(&good[..cut]);
        }
    }

    #[test]
    fn binary_parameters_decode_and_truncation_is_an_error() {
        use rusqlite::types::Value;
        // Three parameters: LONGLONG 7, NULL, VAR_STRING "hi"; types sent (flag 1).
        let mut packet = vec![0b0000_0010, 1, 0x08, 0, 0x06, 0, 0xFD, 0];
        packet.extend_from_slice(&7i64.to_le_bytes());
        packet.extend_from_slice(&[2, b'h', b'i']);
        let mut types = Vec::new();
        let values = decode_params(&mut Reader::new(&packet), 3, &mut types).expect("decodes");
        assert_eq!(
            values,
            [Value::Integer(7), Value::Null, Value::Text("hi".into())]
        );
        for cut in 0..packet.len() {
            let mut types = Vec::new();
            assert!(
                decode_params(&mut Reader::new(&packet[..cut]), 3, &mut types).is_err(),
                "cut at {cut}"
            );
        }
        // Later executions may omit the types (flag 0) and reuse the remembered ones.
        let mut again = vec![0b0000_0010, 0];
        again.extend_from_slice(&(-1i64).to_le_bytes());
        again.extend_from_slice(&[1, b'x']);
        let values = decode_params(&mut Reader::new(&again), 3, &mut types).expect("decodes");
        assert_eq!(
            values,
            [Value::Integer(-1), Value::Null, Value::Text("x".into())]
        );
    }

    #[test]
    fn binary_rows_follow_the_column_kinds() {
        use rusqlite::types::Value;
        let rows = vec![vec![
            Value::Integer(5),
            Value::Text("a".into()),
            Value::Null,
            Value::Real(1.5),
        ]];
        let kinds = binary_kinds(
            4,
            &[
                Some("INT".into()),
                Some("VARCHAR(4)".into()),
                Some("BIGINT".into()),
                None,
            ],
            &rows,
        );
        assert_eq!(
            kinds,
            [
                ColumnType::Long,
                ColumnType::VarString,
                ColumnType::LongLong,
                ColumnType::Double
            ]
        );
        let row = binary_row(&rows[0], &kinds);
        assert_eq!(row[0], 0x00);
        assert_eq!(row[1], 0b0001_0000, "the NULL in column 3 sets bit 2 + 2");
        assert_eq!(&row[2..6], &5i32.to_le_bytes());
        assert_eq!(&row[6..8], &[1, b'a']);
        assert_eq!(&row[8..16], &1.5f64.to_le_bytes());
        let mixed = vec![vec![Value::Text("not a number".into())]];
        assert_eq!(
            binary_kinds(1, &[Some("INT".into())], &mixed),
            [ColumnType::VarString],
            "values that do not fit their type travel as strings"
        );
    }
}
