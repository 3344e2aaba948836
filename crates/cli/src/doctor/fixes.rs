//! What to change, per server: short, concrete configuration lines for
//! nginx, Apache (mod_proxy_wstunnel), Caddy, HAProxy and switchyard's own
//! gateway (`switchyard serve --config`).

use serde_json::{json, Value};

/// A problem the doctor can diagnose, and therefore fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// A reverse proxy forwarded the request without `Upgrade`/`Connection`.
    ProxyDroppedUpgrade,
    /// The server answered the upgrade request like a plain GET.
    UpgradeIgnored,
    /// 301/302/307/308 on the WebSocket URL.
    Redirect,
    /// 403 (or 400) for this client: Origin or access policy.
    OriginRejected,
    /// 426 naming other protocols than the one we asked for.
    OtherProtocolWanted,
    /// 5xx: the backend failed or is unreachable from the proxy.
    BackendError,
    /// 101 with a wrong or missing `Sec-WebSocket-Accept`.
    BadAccept,
    /// The upgrade answer is not a valid HTTP/1.1 head, or the server closed.
    NotHttp,
    TlsExpired,
    TlsWrongName,
    TlsUnknownIssuer,
    TlsOther,
    /// Nothing listens, or a firewall drops the packets.
    Unreachable,
    /// The host name does not resolve.
    Dns,
    /// An https page cannot open a ws:// URL.
    MixedContent,
    /// Something on the path closes silent connections.
    IdleTimeout,
    /// No pong came back for our ping.
    NoPong,
    /// The server speaks HTTP/2 without extended CONNECT (RFC 8441), or
    /// refused it.
    H2NoWebSocket,
    /// Alt-Svc advertises HTTP/3 but a WebSocket over it failed.
    H3Broken,
    /// Subprotocols were offered and none was selected.
    NoSubprotocol,
}

/// The fix for one problem: a summary and one line per server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fix {
    pub summary: String,
    pub nginx: String,
    pub apache: String,
    pub caddy: String,
    pub haproxy: String,
    pub switchyard: String,
}

impl Fix {
    pub fn per_server(&self) -> [(&'static str, &str); 5] {
        [
            ("nginx", &self.nginx),
            ("Apache", &self.apache),
            ("Caddy", &self.caddy),
            ("HAProxy", &self.haproxy),
            ("switchyard", &self.switchyard),
        ]
    }

    /// The same lines with the URL's host for `HOST` and its path for the
    /// example path `/ws`, so they can be pasted.
    pub fn tailored(mut self, host: &str, path: &str) -> Fix {
        let path = if path.is_empty() { "/" } else { path };
        for line in [
            &mut self.nginx,
            &mut self.apache,
            &mut self.caddy,
            &mut self.haproxy,
            &mut self.switchyard,
        ] {
            *line = line.replace("HOST", host).replace("/ws", path);
        }
        self
    }

    pub fn json(&self) -> Value {
        json!({
            "summary": self.summary,
            "nginx": self.nginx,
            "apache": self.apache,
            "caddy": self.caddy,
            "haproxy": self.haproxy,
            "switchyard": self.switchyard,
        })
    }

    /// Replace the summary (keeps the per-server lines).
    pub fn with_summary(mut self, summary: impl Into<String>) -> Fix {
        self.summary = summary.into();
        self
    }
}

const NGINX_UPGRADE: &str = "location /ws { proxy_pass http://backend; proxy_http_version 1.1; \
     proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\"; }";
const APACHE_UPGRADE: &str = "a2enmod proxy proxy_http proxy_wstunnel; \
     ProxyPass /ws ws://backend:8080/ws upgrade=websocket";
const CADDY_UPGRADE: &str = "reverse_proxy /ws* backend:8080   # forwards Upgrade by itself; \
     remove any `header_up Connection`/`header_up Upgrade` override";
const HAPROXY_UPGRADE: &str =
    "frontend fe: mode http; default_backend ws   backend ws: mode http; \
     server s1 backend:8080; timeout tunnel 1h   # no `option httpclose` on this path";
const SWITCHYARD_UPGRADE: &str = "[[upstream]] name = \"app\" servers = [\"ws://backend:8080\"]  \
     [[route]] path = \"/ws\" upstream = \"app\"";

const NGINX_CERT: &str = "ssl_certificate /etc/letsencrypt/live/HOST/fullchain.pem; \
     ssl_certificate_key /etc/letsencrypt/live/HOST/privkey.pem;";
const APACHE_CERT: &str = "SSLCertificateFile /etc/letsencrypt/live/HOST/fullchain.pem; \
     SSLCertificateKeyFile /etc/letsencrypt/live/HOST/privkey.pem";
const CADDY_CERT: &str = "HOST { reverse_proxy backend:8080 }   # automatic HTTPS: Caddy obtains \
     and renews the certificate; drop a manual `tls cert.pem key.pem`";
const HAPROXY_CERT: &str =
    "bind :443 ssl crt /etc/haproxy/certs/HOST.pem   # the PEM holds the full chain, then the key";
const SWITCHYARD_CERT: &str = "[[listener]] address = \"0.0.0.0:443\" \
     tls = { cert = \"fullchain.pem\", key = \"privkey.pem\" }";

impl Problem {
    pub fn fix(self) -> Fix {
        use Problem::*;
        let (summary, nginx, apache, caddy, haproxy, switchyard): (
            &str,
            &'static str,
            &'static str,
            &'static str,
            &'static str,
            &'static str,
        ) = match self {
            ProxyDroppedUpgrade => (
                "make the reverse proxy forward the upgrade: HTTP/1.1 to the backend with \
                 the client's Upgrade and Connection: upgrade headers",
                NGINX_UPGRADE,
                APACHE_UPGRADE,
                CADDY_UPGRADE,
                HAPROXY_UPGRADE,
                SWITCHYARD_UPGRADE,
            ),
            UpgradeIgnored => (
                "point the URL at the WebSocket endpoint, and make every proxy on the path \
                 forward Upgrade and Connection",
                NGINX_UPGRADE,
                APACHE_UPGRADE,
                CADDY_UPGRADE,
                HAPROXY_UPGRADE,
                SWITCHYARD_UPGRADE,
            ),
            Redirect => (
                "connect to the URL in Location (often wss:// instead of ws://), or exempt the \
                 WebSocket path from the redirect",
                "location /ws { proxy_pass http://backend; ... }   # before the `return 301` \
                 server block, or use wss:// in the client",
                "RewriteCond %{HTTP:Upgrade} !=websocket [NC] before the redirect rule",
                "@ws path /ws*; handle @ws { reverse_proxy backend:8080 }   # ahead of `redir`",
                "http-request redirect scheme https unless { req.hdr(upgrade) -i websocket } \
                 || { ssl_fc }",
                "[[route]] path = \"/ws\" app = \"echo\"   # a route for the exact path the \
                 client uses",
            ),
            OriginRejected => (
                "allow the page's Origin on the server (browsers always send it), or send the \
                 right one with --origin",
                "if ($http_origin !~ ^https://(app\\.example\\.com)$) { return 403; }   # add \
                 your page's origin to this list",
                "SetEnvIf Origin \"^https://app\\.example\\.com$\" ok; Require env ok   # add \
                 the page's origin",
                "@badorigin not header Origin https://app.example.com; respond @badorigin 403  \
                 # add the page's origin",
                "http-request deny if !{ req.hdr(origin) -m str https://app.example.com }   # \
                 add the page's origin",
                "[route.policy] allowed_origins = [\"https://app.example.com\"]",
            ),
            OtherProtocolWanted => (
                "the server wants another protocol or version (see the Upgrade and \
                 Sec-WebSocket-Version it answered); speak that one, or enable WebSocket \
                 (version 13) on it",
                NGINX_UPGRADE,
                APACHE_UPGRADE,
                CADDY_UPGRADE,
                HAPROXY_UPGRADE,
                "[route.policy] allowed_upgrades = [\"websocket\"]",
            ),
            BackendError => (
                "the proxy could not reach a working backend: start it, check the address \
                 the proxy forwards to, and read the backend's logs",
                "proxy_pass http://127.0.0.1:8080;   # the backend's real address; see \
                 error.log for `connect() failed`",
                "ProxyPass /ws ws://127.0.0.1:8080/ws upgrade=websocket   # see the error log \
                 for AH01114/AH00957",
                "reverse_proxy /ws* 127.0.0.1:8080   # see the log for `dial tcp`",
                "server s1 127.0.0.1:8080 check   # `show stat` tells which server is DOWN",
                "[[upstream]] name = \"app\" servers = [\"ws://127.0.0.1:8080\"]",
            ),
            BadAccept => (
                "the server must answer Sec-WebSocket-Accept = base64(SHA-1(key + \
                 \"258EAFA5-E914-47DA-95CA-C5AB0DC85B11\")) for the key it received; no proxy \
                 may rewrite Sec-WebSocket-Key or the answer",
                "remove any `proxy_set_header Sec-WebSocket-Key ...` or `more_set_headers` \
                 touching Sec-WebSocket-*",
                "remove `RequestHeader set Sec-WebSocket-Key` / `Header set \
                 Sec-WebSocket-Accept` rules",
                "remove `header_up Sec-WebSocket-Key` / `header_down Sec-WebSocket-Accept` \
                 overrides",
                "remove `http-request set-header Sec-WebSocket-Key` / `http-response \
                 set-header Sec-WebSocket-Accept` rules",
                "switchyard computes the accept itself: put `switchyard serve` (or its proxy) \
                 in front of the broken server",
            ),
            NotHttp => (
                "the port does not answer HTTP/1.1: use wss:// for a TLS port, ws:// for a \
                 cleartext one, and check what listens there",
                "listen 443 ssl;  /  listen 80;   # the scheme must match the listener",
                "<VirtualHost *:443> SSLEngine on ...   # the scheme must match the vhost",
                "https://HOST { ... }  /  http://HOST { ... }",
                "bind :443 ssl crt site.pem  /  bind :80",
                "[[listener]] address = \"0.0.0.0:443\" tls = { cert = \"fullchain.pem\", \
                 key = \"privkey.pem\" }",
            ),
            TlsExpired => (
                "renew the certificate and reload the server (automate it: certbot renew / \
                 ACME)",
                NGINX_CERT,
                APACHE_CERT,
                CADDY_CERT,
                HAPROXY_CERT,
                SWITCHYARD_CERT,
            ),
            TlsWrongName => (
                "serve a certificate whose subjectAltName covers the host in the URL (or use \
                 the name the certificate was issued for)",
                "server { server_name HOST; ssl_certificate /etc/letsencrypt/live/HOST/\
                 fullchain.pem; ... }   # one server block per name (SNI)",
                "<VirtualHost *:443> ServerName HOST; SSLCertificateFile \
                 /etc/letsencrypt/live/HOST/fullchain.pem",
                "HOST { reverse_proxy backend:8080 }   # Caddy gets a certificate for HOST",
                "bind :443 ssl crt /etc/haproxy/certs/   # a directory: HAProxy picks the \
                 certificate by SNI",
                SWITCHYARD_CERT,
            ),
            TlsUnknownIssuer => (
                "serve the full chain (leaf + intermediates) from a public CA; for a private \
                 CA, give clients its certificate (switchyard: --ca ca.pem)",
                NGINX_CERT,
                APACHE_CERT,
                CADDY_CERT,
                HAPROXY_CERT,
                SWITCHYARD_CERT,
            ),
            TlsOther => (
                "fix the server's TLS setup (protocol versions, certificate and key)",
                "ssl_protocols TLSv1.2 TLSv1.3; ssl_certificate fullchain.pem; \
                 ssl_certificate_key privkey.pem;",
                "SSLProtocol -all +TLSv1.2 +TLSv1.3; SSLCertificateFile fullchain.pem",
                CADDY_CERT,
                "bind :443 ssl crt site.pem ssl-min-ver TLSv1.2",
                SWITCHYARD_CERT,
            ),
            Unreachable => (
                "start the server, or open the port in the firewall; check the host and port \
                 in the URL",
                "listen 0.0.0.0:443 ssl;   # and `ss -ltnp` shows nginx on that port",
                "Listen 443   # and `ss -ltnp` shows httpd on that port",
                "HOST:443 { ... }   # and `ss -ltnp` shows caddy on that port",
                "bind :443 ssl crt site.pem",
                "[[listener]] address = \"0.0.0.0:8080\"   # or switchyard serve --listen \
                 0.0.0.0:8080",
            ),
            Dns => (
                "publish an A/AAAA record for the host (or fix the name in the URL)",
                "server_name HOST;   # and a DNS record HOST -> this server's address",
                "ServerName HOST   # and a DNS record HOST -> this server's address",
                "HOST { ... }   # Caddy needs the DNS record to get a certificate too",
                "(DNS is outside HAProxy: add the A/AAAA record for HOST)",
                "[[route]] host = \"HOST\"   # and a DNS record HOST -> this server's address",
            ),
            MixedContent => (
                "an https page may only open wss:// URLs: serve the WebSocket over TLS and use \
                 wss://",
                "server { listen 443 ssl; location /ws { proxy_pass http://backend; \
                 proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; \
                 proxy_set_header Connection \"upgrade\"; } }",
                "<VirtualHost *:443> SSLEngine on; ProxyPass /ws ws://backend:8080/ws \
                 upgrade=websocket",
                "HOST { reverse_proxy /ws* backend:8080 }   # HTTPS by default",
                "bind :443 ssl crt site.pem   # and the page uses wss://",
                SWITCHYARD_CERT,
            ),
            IdleTimeout => (
                "raise the idle timeout of the proxy on the path, or keep the connection busy \
                 with pings more often than it (e.g. every 30 s)",
                "proxy_read_timeout 3600s; proxy_send_timeout 3600s;   # default 60 s",
                "ProxyPass /ws ws://backend:8080/ws upgrade=websocket timeout=3600   # or \
                 ProxyTimeout 3600",
                "reverse_proxy backend:8080 { stream_timeout 24h }   # and no read_timeout on \
                 the transport",
                "timeout tunnel 1h   # applies once upgraded; `timeout client`/`server` before",
                "[route.policy] idle_timeout = \"1h\" ping_interval = \"30s\"   # clients: \
                 switchyard connect --ping-interval 30s",
            ),
            NoPong => (
                "the server must answer every ping with a pong (RFC 6455 §5.5.2); check that \
                 its WebSocket library reads the connection, and that no proxy eats control \
                 frames",
                "(nginx passes frames through once upgraded: fix the backend)",
                "(mod_proxy_wstunnel passes frames through: fix the backend)",
                "(Caddy passes frames through once upgraded: fix the backend)",
                "(HAProxy passes frames through in `timeout tunnel`: fix the backend)",
                "[route.policy] ping_interval = \"30s\" pong_timeout = \"20s\"   # switchyard \
                 answers pings and drops peers that do not",
            ),
            H2NoWebSocket => (
                "optional: enable WebSocket over HTTP/2 (RFC 8441); until then HTTP/2 clients \
                 open WebSockets on a separate HTTP/1.1 connection",
                "(nginx does not implement RFC 8441; clients fall back to HTTP/1.1)",
                "Protocols h2 http/1.1; H2WebSockets on   # mod_http2, Apache 2.4.58+",
                "(Caddy 2.x accepts extended CONNECT over HTTP/2 by default)",
                "bind :443 ssl crt site.pem alpn h2,http/1.1   # RFC 8441 is on by default",
                "[[listener]] protocols = [\"h1\", \"h2\"]",
            ),
            H3Broken => (
                "Alt-Svc advertises HTTP/3 but it does not work: open the UDP port and enable \
                 extended CONNECT over HTTP/3 (RFC 9220), or stop advertising it",
                "listen 443 quic reuseport; add_header Alt-Svc 'h3=\":443\"; ma=86400';   # \
                 nginx 1.25+; remove the header if UDP 443 is closed",
                "(Apache has no HTTP/3: remove `Header set Alt-Svc` lines)",
                "servers { protocols h1 h2 h3 }   # and open UDP 443",
                "bind quic4@:443 ssl crt site.pem alpn h3; http-response set-header Alt-Svc \
                 'h3=\":443\"; ma=86400'",
                "[[listener]] protocols = [\"h1\", \"h2\", \"h3\"]   # and open UDP on the \
                 port",
            ),
            NoSubprotocol => (
                "make the backend accept one of the offered subprotocols (proxies pass \
                 Sec-WebSocket-Protocol through unchanged), or offer the names it supports",
                "(nginx forwards Sec-WebSocket-Protocol as is: configure the backend)",
                "(mod_proxy_wstunnel forwards Sec-WebSocket-Protocol as is: configure the \
                 backend)",
                "(Caddy forwards Sec-WebSocket-Protocol as is: configure the backend; no \
                 `header_up -Sec-WebSocket-Protocol`)",
                "(HAProxy forwards Sec-WebSocket-Protocol as is: no `http-request del-header \
                 Sec-WebSocket-Protocol`)",
                "AcceptConfig::default().handshake(ServerConfig::default().subprotocols([\"chat\"])) \
                   # switchyard::server; the client's order of preference wins",
            ),
        };
        Fix {
            summary: summary.to_owned(),
            nginx: nginx.to_owned(),
            apache: apache.to_owned(),
            caddy: caddy.to_owned(),
            haproxy: haproxy.to_owned(),
            switchyard: switchyard.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Problem; 20] = [
        Problem::NoSubprotocol,
        Problem::ProxyDroppedUpgrade,
        Problem::UpgradeIgnored,
        Problem::Redirect,
        Problem::OriginRejected,
        Problem::OtherProtocolWanted,
        Problem::BackendError,
        Problem::BadAccept,
        Problem::NotHttp,
        Problem::TlsExpired,
        Problem::TlsWrongName,
        Problem::TlsUnknownIssuer,
        Problem::TlsOther,
        Problem::Unreachable,
        Problem::Dns,
        Problem::MixedContent,
        Problem::IdleTimeout,
        Problem::NoPong,
        Problem::H2NoWebSocket,
        Problem::H3Broken,
    ];

    #[test]
    fn every_problem_has_a_line_for_every_server() {
        for p in ALL {
            let f = p.fix();
            assert!(!f.summary.is_empty(), "{p:?}");
            for (server, line) in f.per_server() {
                assert!(line.len() > 10, "{p:?} {server}: {line:?}");
                assert!(!line.contains("\n"), "{p:?} {server}: one line");
            }
        }
    }

    #[test]
    fn tailored_fixes_use_the_url_host_and_path() {
        let f = Problem::ProxyDroppedUpgrade
            .fix()
            .tailored("chat.example", "/socket");
        assert!(
            f.nginx.starts_with("location /socket { proxy_pass"),
            "{}",
            f.nginx
        );
        assert!(
            f.apache
                .contains("ProxyPass /socket ws://backend:8080/socket"),
            "{}",
            f.apache
        );
        assert!(
            f.caddy.starts_with("reverse_proxy /socket* "),
            "{}",
            f.caddy
        );
        let f = Problem::TlsWrongName.fix().tailored("chat.example", "/");
        assert!(f.nginx.contains("server_name chat.example;"), "{}", f.nginx);
        assert!(!f.nginx.contains("HOST"));
    }

    #[test]
    fn key_fixes_name_the_directives() {
        let f = Problem::ProxyDroppedUpgrade.fix();
        assert!(f.nginx.contains("proxy_set_header Upgrade $http_upgrade"));
        assert!(f.nginx.contains("proxy_http_version 1.1"));
        assert!(f.apache.contains("proxy_wstunnel"));
        assert!(f.haproxy.contains("timeout tunnel"));
        let f = Problem::IdleTimeout.fix();
        assert!(f.nginx.contains("proxy_read_timeout"));
        assert!(f.switchyard.contains("ping_interval"));
        let f = Problem::OriginRejected.fix();
        assert!(f.switchyard.contains("allowed_origins"));
    }
}
