package emulator

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"
)

// MaxIssuerKeys is how many signing keys Azure AD keeps from an issuer's JWKS.
const MaxIssuerKeys = 100

// IssuerFetchError means the issuer's discovery document or JWKS could not be fetched or read
// (Azure AD answers AADSTS90061).
type IssuerFetchError struct {
	Issuer, URL string
	Err         error
}

func (e *IssuerFetchError) Error() string {
	return fmt.Sprintf("fetch %s for issuer %s: %v", e.URL, e.Issuer, e.Err)
}

func (e *IssuerFetchError) Unwrap() error { return e.Err }

// errNotLoopback refuses connections the emulator must not make: it only fetches issuers on
// loopback, so tests never reach the network.
var errNotLoopback = errors.New("the emulator fetches issuer documents from loopback addresses only (127.0.0.0/8, ::1)")

// issuerTrust holds the CAs trusted for external issuers and the keys fetched from them.
type issuerTrust struct {
	mu    sync.Mutex
	pool  *x509.CertPool
	cache map[string]*issuerKeySet
}

type issuerKeySet struct {
	keys    map[string]crypto.PublicKey // kid → key
	fetched time.Time
}

func (e *Emulator) initIssuerTrust() error {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	certs, err := parseCertificates(e.cfg.IssuerCAs)
	if err != nil {
		return fmt.Errorf("issuerCAs: %w", err)
	}
	for _, c := range certs {
		pool.AddCert(c)
	}
	e.issuers.pool = pool
	e.issuers.cache = map[string]*issuerKeySet{}
	return nil
}

// TrustIssuerCA adds PEM certificates trusted when fetching external issuers' documents, e.g.
// the CA of a test kube-apiserver.
func (e *Emulator) TrustIssuerCA(pemCerts []byte) error {
	certs, err := parseCertificates([]string{string(pemCerts)})
	if err != nil {
		return fmt.Errorf("trust issuer CA: %w", err)
	}
	if len(certs) == 0 {
		return errors.New("trust issuer CA: no PEM certificate found: pass the CA certificate in PEM form")
	}
	e.issuers.mu.Lock()
	defer e.issuers.mu.Unlock()
	p := e.issuers.pool.Clone()
	for _, c := range certs {
		p.AddCert(c)
	}
	e.issuers.pool = p
	return nil
}

// FlushIssuerKeys forgets every cached issuer key, as if the cache TTL had passed.
func (e *Emulator) FlushIssuerKeys() {
	e.issuers.mu.Lock()
	e.issuers.cache = map[string]*issuerKeySet{}
	e.issuers.mu.Unlock()
}

// issuerKeys returns an issuer's signing keys, from the cache while younger than IssuerKeyCache.
func (e *Emulator) issuerKeys(ctx context.Context, iss string) (map[string]crypto.PublicKey, error) {
	now := time.Now()
	e.issuers.mu.Lock()
	ks, pool := e.issuers.cache[iss], e.issuers.pool
	e.issuers.mu.Unlock()
	if ttl := e.cfg.Timing.IssuerKeyCache.Duration; ks != nil && ttl > 0 && now.Sub(ks.fetched) < ttl {
		return ks.keys, nil
	}
	keys, err := fetchIssuerKeys(ctx, iss, issuerClient(pool))
	if err != nil {
		return nil, err
	}
	e.issuers.mu.Lock()
	e.issuers.cache[iss] = &issuerKeySet{keys: keys, fetched: now}
	e.issuers.mu.Unlock()
	return keys, nil
}

// issuerClient trusts pool and dials loopback only (also after redirects or a jwks_uri elsewhere).
func issuerClient(pool *x509.CertPool) *http.Client {
	// No DNS either: names resolve from /etc/hosts only (localhost), never through a name server.
	noDNS := &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
		return nil, fmt.Errorf("DNS lookup: %w", errNotLoopback)
	}}
	d := &net.Dialer{Timeout: 5 * time.Second, Resolver: noDNS, Control: func(_, address string, _ syscall.RawConn) error {
		h, _, err := net.SplitHostPort(address)
		if ip := net.ParseIP(h); err != nil || ip == nil || !ip.IsLoopback() {
			return fmt.Errorf("dial %s: %w", address, errNotLoopback)
		}
		return nil
	}}
	return &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(r *http.Request, _ []*http.Request) error {
		return loopbackURL(r.URL)
	}, Transport: &http.Transport{
		DialContext:     d.DialContext,
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
	}}
}

// loopbackURL refuses URLs whose host is not a loopback IP or localhost, before any DNS lookup.
func loopbackURL(u *url.URL) error {
	h := u.Hostname()
	if ip := net.ParseIP(h); h != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("host %q: %w", h, errNotLoopback)
	}
	return nil
}

func getJSON(ctx context.Context, c *http.Client, iss, u string, v any) error {
	fail := func(err error) error { return &IssuerFetchError{Issuer: iss, URL: u, Err: err} }
	pu, err := url.Parse(u)
	if err != nil || pu.Scheme != "https" || pu.Host == "" {
		return fail(fmt.Errorf("not an absolute https URL: issuers must serve their documents over HTTPS"))
	}
	if err := loopbackURL(pu); err != nil {
		return fail(err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fail(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return fail(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fail(err)
	}
	if resp.StatusCode != http.StatusOK {
		return fail(fmt.Errorf("HTTP %d (the documents must be readable without credentials): %s", resp.StatusCode, truncate(string(b), 200)))
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fail(fmt.Errorf("not JSON: %w", err))
	}
	return nil
}

// fetchIssuerKeys follows {iss}/.well-known/openid-configuration to jwks_uri and reads its keys.
func fetchIssuerKeys(ctx context.Context, iss string, c *http.Client) (map[string]crypto.PublicKey, error) {
	disc := strings.TrimSuffix(iss, "/") + "/.well-known/openid-configuration"
	var doc struct {
		JWKSURI string `json:"jwks_uri"`
	}
	if err := getJSON(ctx, c, iss, disc, &doc); err != nil {
		return nil, err
	}
	if doc.JWKSURI == "" {
		return nil, &IssuerFetchError{Issuer: iss, URL: disc, Err: errors.New("the discovery document has no jwks_uri")}
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := getJSON(ctx, c, iss, doc.JWKSURI, &set); err != nil {
		return nil, err
	}
	keys := map[string]crypto.PublicKey{}
	for i, raw := range set.Keys {
		if i >= MaxIssuerKeys {
			break
		}
		kid, k, err := parseJWK(raw)
		if err == nil && kid != "" {
			keys[kid] = k
		}
	}
	return keys, nil
}

// parseJWK reads an RSA or P-256 EC public key; other kinds are skipped by the caller.
func parseJWK(raw json.RawMessage) (string, crypto.PublicKey, error) {
	var j struct {
		Kty, Kid, Crv, N, E, X, Y string
	}
	if err := json.Unmarshal(raw, &j); err != nil {
		return "", nil, err
	}
	dec := base64.RawURLEncoding.DecodeString
	switch j.Kty {
	case "RSA":
		n, err1 := dec(j.N)
		ex, err2 := dec(j.E)
		if err := errors.Join(err1, err2); err != nil || len(ex) > 4 {
			return "", nil, fmt.Errorf("RSA key %q: bad n or e", j.Kid)
		}
		return j.Kid, &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(ex).Int64())}, nil
	case "EC":
		x, err1 := dec(j.X)
		y, err2 := dec(j.Y)
		if err := errors.Join(err1, err2); err != nil || j.Crv != "P-256" || len(x) != 32 || len(y) != 32 {
			return "", nil, fmt.Errorf("EC key %q: want P-256 with 32-byte x and y", j.Kid)
		}
		k, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
		if err != nil {
			return "", nil, err
		}
		return j.Kid, k, nil
	}
	return "", nil, fmt.Errorf("key %q: unsupported kty %q", j.Kid, j.Kty)
}
