package emulator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/go-logr/logr"
)

// NotFoundError reports that a named VM, instance, scale set or identity does not exist.
type NotFoundError struct{ What, Name string }

func (e *NotFoundError) Error() string {
	return fmt.Sprintf("emulator: %s %q not found: use a name or resource ID from the world config", e.What, e.Name)
}

// Emulator is one emulated Azure: ARM, AAD, IMDS endpoints and an admin API over one world.
// Create it with New, then Start; all methods are safe for concurrent use.
type Emulator struct {
	cfg Config
	log logr.Logger
	pki *pki

	mu         sync.RWMutex // guards the world below
	tenants    map[string]bool
	identities map[string]*identity // lower ID
	idGen      map[string]int       // lower ID → last generation, survives deletion
	computes   map[string]*compute  // lower ID
	hosts      map[string]*host     // every accepted lookup key (lower) → host
	principals map[string]*principal
	byOID      map[string]*principal
	ops        map[string]*operation

	counters counters
	faults   faultSet
	throttle throttler
	tokens   tokenCache
	imdsMu   sync.Mutex
	imds     map[string]*imdsEndpoint // canonical host key → endpoint
	armAuth  sync.Map                 // bearer token → *armCaller, so ARM GETs skip RSA verification
	issuers  issuerTrust              // external OIDC issuers: trusted CAs and cached keys

	servers  []*http.Server
	armURL   string
	aadURL   string
	adminURL string
	started  bool
	closed   chan struct{}
}

// New builds the world described by cfg. It does not listen yet: call Start.
func New(cfg Config) (*Emulator, error) {
	cfg.applyDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	p, err := newPKI()
	if err != nil {
		return nil, err
	}
	e := &Emulator{
		cfg: cfg, log: cfg.Logger.WithName("azure-emulator"), pki: p,
		tenants:    map[string]bool{strings.ToLower(cfg.TenantID): true},
		identities: map[string]*identity{}, idGen: map[string]int{},
		computes: map[string]*compute{}, hosts: map[string]*host{},
		principals: map[string]*principal{}, byOID: map[string]*principal{},
		ops: map[string]*operation{}, imds: map[string]*imdsEndpoint{},
		closed: make(chan struct{}),
	}
	e.throttle.init(cfg.Throttling)
	e.tokens.init()
	e.counters.init()
	for _, t := range cfg.ExtraTenants {
		e.tenants[strings.ToLower(t)] = true
	}
	for _, ic := range cfg.UserAssignedIdentities {
		idn := e.createIdentityLocked(ic)
		if err := idn.FICs.preload(ic.FederatedCredentials, "identity "+ic.Name); err != nil {
			return nil, err
		}
	}
	for _, v := range cfg.VirtualMachines {
		sub, rg := or(v.SubscriptionID, cfg.SubscriptionID), or(v.ResourceGroup, cfg.ResourceGroup)
		c := e.addCompute(KindVM, sub, rg, v.Name, v.SystemAssigned)
		if err := e.preassign(c, v.UserAssignedIdentities); err != nil {
			return nil, err
		}
		h := &host{Key: c.ID, Res: c}
		e.addHostKeys(h, c.ID, v.Name)
	}
	for _, v := range cfg.VirtualMachineScaleSets {
		sub, rg := or(v.SubscriptionID, cfg.SubscriptionID), or(v.ResourceGroup, cfg.ResourceGroup)
		c := e.addCompute(KindVMSS, sub, rg, v.Name, v.SystemAssigned)
		if err := e.preassign(c, v.UserAssignedIdentities); err != nil {
			return nil, err
		}
		for i := 0; i < v.Instances; i++ {
			in := &instance{Parent: c, InstanceID: fmt.Sprint(i), Name: fmt.Sprintf("%s_%d", v.Name, i),
				ComputerName: ComputerName(v.Name, i), ID: fmt.Sprintf("%s/virtualMachines/%d", c.ID, i)}
			in.VMID = derivedGUID("vmid:" + in.ID)
			c.Instances = append(c.Instances, in)
			h := &host{Key: in.ID, Res: c, Inst: in}
			e.addHostKeys(h, in.ID, in.ComputerName, v.Name+"/"+in.InstanceID, in.Name)
		}
	}
	for _, pc := range cfg.ServicePrincipals {
		if err := e.addPrincipal(pc); err != nil {
			return nil, err
		}
	}
	for _, a := range cfg.AppRegistrations {
		pc := PrincipalConfig{AppID: a.ClientID, ObjectID: a.ObjectID, TenantID: a.TenantID, FederatedCredentials: a.FederatedCredentials}
		if err := e.addPrincipal(pc); err != nil {
			return nil, err
		}
	}
	if err := e.initIssuerTrust(); err != nil {
		return nil, err
	}
	return e, nil
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func (e *Emulator) addCompute(k Kind, sub, rg, name string, system bool) *compute {
	id := VMID(sub, rg, name)
	if k == KindVMSS {
		id = VMSSID(sub, rg, name)
	}
	c := &compute{Kind: k, ID: id, Name: name, Sub: sub, RG: rg, Location: e.cfg.Location, TenantID: e.cfg.TenantID,
		VMID: derivedGUID("vmid:" + id), ProvisioningState: "Succeeded", ETag: 1,
		Identity: identityState{User: map[string]*assignment{}}}
	if system {
		c.Identity.System = true
		c.Identity.SystemPrincipalID = derivedGUID("system:" + id)
	}
	e.computes[strings.ToLower(id)] = c
	return c
}

func (e *Emulator) addHostKeys(h *host, keys ...string) {
	for _, k := range keys {
		e.hosts[strings.ToLower(k)] = h
	}
}

// identityKey resolves a configured identity name or a full ID to a lower-case ID.
func (e *Emulator) identityKey(nameOrID string) string {
	if strings.HasPrefix(nameOrID, "/") {
		return strings.ToLower(nameOrID)
	}
	return strings.ToLower(IdentityID(e.cfg.SubscriptionID, e.cfg.ResourceGroup, nameOrID))
}

func (e *Emulator) preassign(c *compute, ids []string) error {
	for _, n := range ids {
		idn, ok := e.identities[e.identityKey(n)]
		if !ok {
			return &ConfigError{fmt.Sprintf("%s %q lists identity %q that is not defined: add it to userAssignedIdentities", c.Kind, c.Name, n)}
		}
		c.Identity.User[strings.ToLower(idn.ID)] = &assignment{ID: idn.ID, PrincipalID: idn.PrincipalID, ClientID: idn.ClientID, Generation: idn.Generation}
	}
	return nil
}

// createIdentityLocked creates (or re-creates) an identity; re-creation gets fresh GUIDs unless given.
func (e *Emulator) createIdentityLocked(ic IdentityConfig) *identity {
	sub, rg := or(ic.SubscriptionID, e.cfg.SubscriptionID), or(ic.ResourceGroup, e.cfg.ResourceGroup)
	id := IdentityID(sub, rg, ic.Name)
	l := strings.ToLower(id)
	gen := e.idGen[l] + 1
	e.idGen[l] = gen
	seed := id
	if gen > 1 {
		seed = fmt.Sprintf("%s#%d", id, gen)
	}
	idn := &identity{ID: id, Name: ic.Name, Sub: sub, RG: rg, Location: e.cfg.Location,
		TenantID:    or(ic.TenantID, e.cfg.TenantID),
		ClientID:    or(ic.ClientID, derivedGUID("client:"+seed)),
		PrincipalID: or(ic.PrincipalID, derivedGUID("principal:"+seed)),
		Generation:  gen}
	e.identities[l] = idn
	return idn
}

func (e *Emulator) addPrincipal(pc PrincipalConfig) error {
	certs, err := parseCertificates(pc.Certificates)
	if err != nil {
		return fmt.Errorf("service principal %s: %w", pc.AppID, err)
	}
	p := &principal{AppID: pc.AppID, ObjectID: or(pc.ObjectID, derivedGUID("sp:"+pc.AppID)),
		TenantID: or(pc.TenantID, e.cfg.TenantID), Secrets: pc.Secrets,
		CertsSHA1: map[string]*certInfo{}, CertsSHA256: map[string]*certInfo{}, Denied: map[string]bool{}}
	for _, c := range certs {
		s1, s256 := thumbprints(c.Raw)
		ci := &certInfo{Cert: c, Public: c.PublicKey}
		p.CertsSHA1[s1] = ci
		p.CertsSHA256[s256] = ci
	}
	for _, d := range pc.DeniedIdentities {
		p.Denied[e.identityKey(d)] = true
	}
	p.Tenants = map[string]string{}
	for _, t := range append([]string{p.TenantID}, pc.Tenants...) {
		p.Tenants[strings.ToLower(t)] = t
		e.tenants[strings.ToLower(t)] = true
	}
	if err := p.FICs.preload(pc.FederatedCredentials, "service principal "+pc.AppID); err != nil {
		return err
	}
	e.principals[strings.ToLower(p.AppID)] = p
	e.byOID[strings.ToLower(p.ObjectID)] = p
	return nil
}

// Start opens the ARM and AAD HTTPS listeners and the admin HTTP listener on loopback.
func (e *Emulator) Start() error {
	if e.started {
		return errors.New("emulator: Start called twice: create a new Emulator instead")
	}
	e.started = true
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{e.pki.serverTLS}, MinVersion: tls.VersionTLS12}
	var err error
	if e.armURL, err = e.serve(e.cfg.ARMAddr, e.armHandler(), tlsCfg); err != nil {
		return fmt.Errorf("start ARM endpoint: %w", err)
	}
	if e.aadURL, err = e.serve(e.cfg.AADAddr, e.aadHandler(), tlsCfg); err != nil {
		return fmt.Errorf("start AAD endpoint: %w", err)
	}
	if e.adminURL, err = e.serve(e.cfg.AdminAddr, e.adminHandler(), nil); err != nil {
		return fmt.Errorf("start admin endpoint: %w", err)
	}
	e.log.Info("started", "arm", e.armURL, "aad", e.aadURL, "admin", e.adminURL)
	return nil
}

// listenLoopback listens on addr, refusing anything but a loopback address.
func listenLoopback(addr string) (net.Listener, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("listen address %q: want host:port: %w", addr, err)
	}
	if ip := net.ParseIP(h); h != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("listen address %q is not loopback: the emulator only listens on 127.0.0.1 (pass a listener to serve elsewhere)", addr)
	}
	return net.Listen("tcp", addr)
}

func (e *Emulator) serve(addr string, h http.Handler, tlsCfg *tls.Config) (string, error) {
	ln, err := listenLoopback(addr)
	if err != nil {
		return "", err
	}
	return e.serveListener(ln, h, tlsCfg), nil
}

func (e *Emulator) serveListener(ln net.Listener, h http.Handler, tlsCfg *tls.Config) string {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: nil}
	scheme := "http"
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
		scheme = "https"
	}
	e.mu.Lock()
	e.servers = append(e.servers, srv)
	e.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
	return scheme + "://" + ln.Addr().String()
}

// Close stops every listener the emulator opened (ARM, AAD, admin and IMDS).
func (e *Emulator) Close() error {
	select {
	case <-e.closed:
		return nil
	default:
		close(e.closed)
	}
	e.mu.Lock()
	srvs := e.servers
	e.servers = nil
	e.mu.Unlock()
	var errs []error
	for _, s := range srvs {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := s.Shutdown(ctx); err != nil {
			errs = append(errs, s.Close())
		}
		cancel()
	}
	return errors.Join(errs...)
}

// ARMURL is the ARM base URL, e.g. https://127.0.0.1:41234.
func (e *Emulator) ARMURL() string { return e.armURL }

// AADURL is the AAD authority host, e.g. https://127.0.0.1:41235 (tenants below it).
func (e *Emulator) AADURL() string { return e.aadURL }

// AdminURL is the admin API base URL (plain HTTP, loopback).
func (e *Emulator) AdminURL() string { return e.adminURL }

// Config returns the effective configuration (defaults applied).
func (e *Emulator) Config() Config { return e.cfg }

// CAPEM returns the PEM of the CA that signed the ARM/AAD server certificate.
func (e *Emulator) CAPEM() []byte { return append([]byte(nil), e.pki.caPEM...) }

// CertPool returns a pool that trusts the emulator's CA.
func (e *Emulator) CertPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(e.pki.caCert)
	return p
}

// WriteCA writes the CA PEM to path, for processes that take a CA file.
func (e *Emulator) WriteCA(path string) error {
	if err := os.WriteFile(path, e.pki.caPEM, 0o644); err != nil {
		return fmt.Errorf("write emulator CA to %s: %w", path, err)
	}
	return nil
}

// HTTPClient returns an HTTP client that trusts the emulator's CA; use it as the SDK Transport.
func (e *Emulator) HTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: e.CertPool(), MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: 64, ForceAttemptHTTP2: false,
	}}
}

// Cloud returns the cloud configuration pointing the SDK at this emulator.
func (e *Emulator) Cloud() cloud.Configuration {
	return cloud.Configuration{
		ActiveDirectoryAuthorityHost: e.aadURL + "/",
		Services: map[cloud.ServiceName]cloud.ServiceConfiguration{
			cloud.ResourceManager: {Endpoint: e.armURL, Audience: ARMAudience},
		},
	}
}

// ClientOptions returns azcore client options (cloud + trusting transport) for credentials.
// azidentity credentials also need DisableInstanceDiscovery: true, since instance discovery
// goes to login.microsoftonline.com for hosts it does not know.
func (e *Emulator) ClientOptions() azcore.ClientOptions {
	return policy.ClientOptions{Cloud: e.Cloud(), Transport: e.HTTPClient()}
}

// ARMClientOptions returns options for armcompute/armmsi clients.
func (e *Emulator) ARMClientOptions() *arm.ClientOptions {
	return &arm.ClientOptions{ClientOptions: e.ClientOptions(), DisableRPRegistration: true}
}
