package emulator

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"strings"
	"time"
)

// pki holds the emulator's self-signed CA, the TLS certificate it serves and the RSA key that
// signs access tokens.
type pki struct {
	caCert    *x509.Certificate
	caPEM     []byte
	serverTLS tls.Certificate
	signer    *rsa.PrivateKey
	kid       string
	certDER   []byte // token-signing certificate, published in JWKS x5c
}

func newPKI() (*pki, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate emulator CA key: %w", err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "podidentity azure-emulator CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * 365 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("create emulator CA certificate: %w", err)
	}
	caCert, _ := x509.ParseCertificate(caDER)

	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate emulator server key: %w", err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * 365 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:     []string{"localhost"},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("create emulator server certificate: %w", err)
	}

	signer, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("generate token signing key: %w", err)
	}
	sigTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(3),
		Subject:      pkix.Name{CommonName: "accounts.emulator"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * 365 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	sigDER, err := x509.CreateCertificate(rand.Reader, sigTmpl, sigTmpl, &signer.PublicKey, signer)
	if err != nil {
		return nil, fmt.Errorf("create token signing certificate: %w", err)
	}
	sum := sha1.Sum(sigDER)
	return &pki{
		caCert:    caCert,
		caPEM:     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		serverTLS: tls.Certificate{Certificate: [][]byte{srvDER, caDER}, PrivateKey: srvKey},
		signer:    signer,
		kid:       base64.RawURLEncoding.EncodeToString(sum[:]),
		certDER:   sigDER,
	}, nil
}

// certInfo is a certificate registered for a service principal.
type certInfo struct {
	Cert   *x509.Certificate
	Public crypto.PublicKey
}

// parseCertificates reads PEM certificates given inline or as file paths.
func parseCertificates(items []string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for _, it := range items {
		data := []byte(it)
		if !strings.Contains(it, "-----BEGIN") {
			b, err := os.ReadFile(it)
			if err != nil {
				return nil, fmt.Errorf("read principal certificate %q (give inline PEM or a readable file path): %w", it, err)
			}
			data = b
		}
		found := false
		for {
			var blk *pem.Block
			blk, data = pem.Decode(data)
			if blk == nil {
				break
			}
			if blk.Type != "CERTIFICATE" {
				continue
			}
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parse principal certificate: %w", err)
			}
			out = append(out, c)
			found = true
		}
		if !found {
			return nil, fmt.Errorf("principal certificate %q holds no PEM CERTIFICATE block", truncate(it, 40))
		}
	}
	return out, nil
}

// thumbprints returns the lower-case hex SHA-1 and SHA-256 digests of a certificate.
func thumbprints(der []byte) (s1, s256 string) {
	a := sha1.Sum(der)
	b := sha256.Sum256(der)
	return hex.EncodeToString(a[:]), hex.EncodeToString(b[:])
}

// decodeThumbprint reads an x5t / x5t#S256 header value into lower-case hex. RFC 7515 says
// base64url, MSAL sends padded standard base64, so every variant is accepted.
func decodeThumbprint(v string) string {
	for _, enc := range []*base64.Encoding{base64.RawURLEncoding, base64.URLEncoding, base64.StdEncoding, base64.RawStdEncoding} {
		if b, err := enc.DecodeString(v); err == nil {
			return hex.EncodeToString(b)
		}
	}
	return strings.ToLower(v)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
