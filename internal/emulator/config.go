package emulator

import (
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"sigs.k8s.io/yaml"
)

// Default identifiers used when a Config leaves them empty. They are fixed so that a test or the
// sample world always sees the same IDs.
const (
	DefaultTenantID       = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	DefaultSubscriptionID = "00000000-0000-0000-0000-000000000001"
	DefaultResourceGroup  = "MC_podidentity_emulator_westus2"
	DefaultLocation       = "westus2"
	// ARMAudience is the audience ARM accepts in bearer tokens (with or without the trailing slash).
	ARMAudience = "https://management.azure.com/"
)

// Config describes the emulated world and the emulator's behaviour. The zero value is a valid,
// empty world with test-friendly timings (see FastTiming); use Load or yaml.Unmarshal to read it
// from a file. Every resource without an explicit subscription or resource group is placed in
// SubscriptionID / ResourceGroup.
type Config struct {
	// TenantID is the home tenant of subscriptions, identities and principals that name none.
	TenantID string `json:"tenantID,omitempty"`
	// ExtraTenants are further tenants AAD knows (for principals that live elsewhere).
	ExtraTenants []string `json:"extraTenants,omitempty"`
	// SubscriptionID and ResourceGroup are the defaults for resources below.
	SubscriptionID string `json:"subscriptionID,omitempty"`
	ResourceGroup  string `json:"resourceGroup,omitempty"`
	Location       string `json:"location,omitempty"`

	VirtualMachines         []VMConfig        `json:"virtualMachines,omitempty"`
	VirtualMachineScaleSets []VMSSConfig      `json:"virtualMachineScaleSets,omitempty"`
	UserAssignedIdentities  []IdentityConfig  `json:"userAssignedIdentities,omitempty"`
	ServicePrincipals       []PrincipalConfig `json:"servicePrincipals,omitempty"`
	// AppRegistrations are applications that authenticate only with federated identity
	// credentials (no secret, no certificate): workload identity federation for service principals.
	AppRegistrations []AppRegistrationConfig `json:"appRegistrations,omitempty"`

	// IssuerCAs are PEM certificates (inline PEM or a file path) trusted, besides the system
	// roots, when Azure AD fetches an external issuer's discovery document and JWKS.
	IssuerCAs []string `json:"issuerCAs,omitempty"`
	// ARMAudiences are further token audiences ARM accepts, e.g. an environment file's
	// tokenAudience; the emulator's own ARM URL (with or without a trailing slash) always is one.
	ARMAudiences []string `json:"armAudiences,omitempty"`

	Timing     Timing     `json:"timing,omitempty"`
	Throttling Throttling `json:"throttling,omitempty"`
	IMDS       IMDSLimits `json:"imds,omitempty"`

	// Listen addresses (host:port, loopback only). Empty means 127.0.0.1 with a free port.
	ARMAddr   string `json:"armAddr,omitempty"`
	AADAddr   string `json:"aadAddr,omitempty"`
	AdminAddr string `json:"adminAddr,omitempty"`

	// Logger receives a structured debug line (V(1)) for every call. Defaults to logr.Discard().
	Logger logr.Logger `json:"-"`
}

// VMConfig is one virtual machine (one Kubernetes node with a VM-type provider ID).
type VMConfig struct {
	Name           string `json:"name"`
	SubscriptionID string `json:"subscriptionID,omitempty"`
	ResourceGroup  string `json:"resourceGroup,omitempty"`
	// SystemAssigned gives the VM a system-assigned identity (principal ID derived from its ID).
	SystemAssigned bool `json:"systemAssigned,omitempty"`
	// UserAssignedIdentities are assigned from the start (names of configured identities or full IDs).
	UserAssignedIdentities []string `json:"userAssignedIdentities,omitempty"`
}

// VMSSConfig is one scale set with Instances instances (instance IDs "0".."n-1").
type VMSSConfig struct {
	Name                   string   `json:"name"`
	SubscriptionID         string   `json:"subscriptionID,omitempty"`
	ResourceGroup          string   `json:"resourceGroup,omitempty"`
	Instances              int      `json:"instances,omitempty"`
	SystemAssigned         bool     `json:"systemAssigned,omitempty"`
	UserAssignedIdentities []string `json:"userAssignedIdentities,omitempty"`
}

// IdentityConfig is one user-assigned managed identity. Empty GUIDs are derived from the resource
// ID, so the same config always yields the same IDs.
type IdentityConfig struct {
	Name           string `json:"name"`
	SubscriptionID string `json:"subscriptionID,omitempty"`
	ResourceGroup  string `json:"resourceGroup,omitempty"`
	ClientID       string `json:"clientID,omitempty"`
	PrincipalID    string `json:"principalID,omitempty"`
	TenantID       string `json:"tenantID,omitempty"`
	// FederatedCredentials exist from the start, as if created through ARM.
	FederatedCredentials []FederatedCredentialConfig `json:"federatedCredentials,omitempty"`
}

// FederatedCredentialConfig is one federated identity credential: Azure AD exchanges an external
// token whose iss, sub and aud equal Issuer, Subject and the audience, byte for byte.
type FederatedCredentialConfig struct {
	Name    string `json:"name"`
	Issuer  string `json:"issuer"`
	Subject string `json:"subject"`
	// Audiences defaults to [api://AzureADTokenExchange]; exactly one is allowed.
	Audiences   []string `json:"audiences,omitempty"`
	Description string   `json:"description,omitempty"`
}

// AppRegistrationConfig is an application that authenticates with federated credentials only.
type AppRegistrationConfig struct {
	ClientID             string                      `json:"clientID"`
	ObjectID             string                      `json:"objectID,omitempty"`
	TenantID             string                      `json:"tenantID,omitempty"`
	FederatedCredentials []FederatedCredentialConfig `json:"federatedCredentials,omitempty"`
}

// PrincipalConfig is an AAD application/service principal that can get tokens with a secret or a
// certificate and call ARM.
type PrincipalConfig struct {
	AppID    string `json:"appID"`
	ObjectID string `json:"objectID,omitempty"`
	TenantID string `json:"tenantID,omitempty"`
	// Tenants are further tenants the application is also registered in (a multi-tenant app
	// consented there), so it can get tokens in each, e.g. for auxiliary tenants. Its home
	// tenant (TenantID) is always one of them; tokens carry the tenant asked for as tid.
	Tenants []string `json:"tenants,omitempty"`
	Secrets []string `json:"secrets,omitempty"`
	// Certificates are PEM-encoded X.509 certificates (inline PEM or a path to a PEM file).
	Certificates []string `json:"certificates,omitempty"`
	// DeniedIdentities are identities (names or IDs) this principal may not assign; assigning one
	// gives LinkedAuthorizationFailed. Everything else is allowed.
	DeniedIdentities []string `json:"deniedIdentities,omitempty"`
	// FederatedCredentials let the application exchange external tokens (as on an app registration).
	FederatedCredentials []FederatedCredentialConfig `json:"federatedCredentials,omitempty"`
}

// Duration is a time.Duration that reads and writes as a Go duration string ("1.5s").
type Duration struct{ time.Duration }

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return []byte(`"` + d.String() + `"`), nil }

// UnmarshalJSON accepts "1.5s" or a number of nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "" || s == "null" {
		d.Duration = 0
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		var n int64
		if _, err2 := fmt.Sscan(s, &n); err2 != nil {
			return fmt.Errorf("duration %q: use a Go duration such as \"1.5s\": %w", s, err)
		}
		v = time.Duration(n)
	}
	d.Duration = v
	return nil
}

// D is shorthand for building a Duration in Go code.
func D(d time.Duration) Duration { return Duration{d} }

// Timing controls how long things take. Zero values mean "instant"; RealisticTiming gives the
// durations the real service shows.
type Timing struct {
	// VMOperation and VMSSOperation are how long an identity PATCH's long-running operation runs.
	VMOperation   Duration `json:"vmOperation,omitempty"`
	VMSSOperation Duration `json:"vmssOperation,omitempty"`
	// OperationRetryAfter, when > 0, is sent as Retry-After (whole seconds, rounded up) on the
	// PATCH and on "InProgress" polls; pollers then wait that long instead of their Frequency.
	OperationRetryAfter Duration `json:"operationRetryAfter,omitempty"`
	// IMDSPropagation is how long after an operation succeeds before IMDS serves the new identity.
	IMDSPropagation Duration `json:"imdsPropagation,omitempty"`
	// IMDSLatency and AADLatency are added to every answer of that service.
	IMDSLatency Duration `json:"imdsLatency,omitempty"`
	AADLatency  Duration `json:"aadLatency,omitempty"`
	ARMLatency  Duration `json:"armLatency,omitempty"`
	// TokenLifetime is the lifetime of AAD client-credential tokens (default 1h); IMDSTokenLifetime
	// that of managed-identity tokens (default 24h).
	TokenLifetime     Duration `json:"tokenLifetime,omitempty"`
	IMDSTokenLifetime Duration `json:"imdsTokenLifetime,omitempty"`
	// FICWrite is how long a federated identity credential write holds its identity: another
	// write to the same identity meanwhile gets 409, as concurrent writes do on Azure.
	FICWrite Duration `json:"ficWrite,omitempty"`
	// FICPropagation is how long after its creation a federated credential still answers
	// AADSTS70021 (real Azure AD: seconds to minutes).
	FICPropagation Duration `json:"ficPropagation,omitempty"`
	// IssuerKeyCache is how long Azure AD keeps an external issuer's keys; zero fetches the
	// discovery document and JWKS on every exchange.
	IssuerKeyCache Duration `json:"issuerKeyCache,omitempty"`
}

// RealisticTiming returns the durations documented for the real service (VM 15 s, VMSS 50 s,
// IMDS ~10 ms, a few seconds of propagation).
func RealisticTiming() Timing {
	return Timing{
		VMOperation: D(15 * time.Second), VMSSOperation: D(50 * time.Second),
		OperationRetryAfter: D(5 * time.Second), IMDSPropagation: D(5 * time.Second),
		IMDSLatency: D(10 * time.Millisecond), AADLatency: D(50 * time.Millisecond),
	}
}

// FastTiming returns short durations for tests: operations take long enough to be observed
// in flight, but tests stay fast.
func FastTiming() Timing {
	return Timing{VMOperation: D(200 * time.Millisecond), VMSSOperation: D(300 * time.Millisecond)}
}

// Bucket is a token bucket: Capacity requests, refilled at RefillPerSecond.
type Bucket struct {
	Capacity        float64 `json:"capacity"`
	RefillPerSecond float64 `json:"refillPerSecond"`
}

// Throttling configures ARM's token buckets, kept per subscription, principal and kind.
type Throttling struct {
	Enabled bool   `json:"enabled"`
	Reads   Bucket `json:"reads,omitempty"`
	Writes  Bucket `json:"writes,omitempty"`
	Deletes Bucket `json:"deletes,omitempty"`
}

// DefaultThrottling returns the documented ARM limits (reads 250 + 25/s, writes and deletes 200 + 10/s).
func DefaultThrottling() Throttling {
	return Throttling{Enabled: true, Reads: Bucket{250, 25}, Writes: Bucket{200, 10}, Deletes: Bucket{200, 10}}
}

// IMDSLimits are the per-VM limits of IMDS's identity category. Zero means unlimited.
type IMDSLimits struct {
	RequestsPerSecond float64 `json:"requestsPerSecond,omitempty"`
	MaxConcurrent     int     `json:"maxConcurrent,omitempty"`
}

// DefaultIMDSLimits returns the documented limits: 20 requests/s and 5 concurrent per VM.
func DefaultIMDSLimits() IMDSLimits { return IMDSLimits{RequestsPerSecond: 20, MaxConcurrent: 5} }

// Load reads a YAML or JSON world file.
func Load(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read emulator world file: %w", err)
	}
	var c Config
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		return Config{}, fmt.Errorf("parse emulator world file %s (check field names against docs/emulator.md): %w", path, err)
	}
	return c, nil
}

// ConfigError reports an invalid world description.
type ConfigError struct{ Msg string }

func (e *ConfigError) Error() string { return "emulator config: " + e.Msg }

func (c *Config) applyDefaults() {
	if c.TenantID == "" {
		c.TenantID = DefaultTenantID
	}
	if c.SubscriptionID == "" {
		c.SubscriptionID = DefaultSubscriptionID
	}
	if c.ResourceGroup == "" {
		c.ResourceGroup = DefaultResourceGroup
	}
	if c.Location == "" {
		c.Location = DefaultLocation
	}
	if c.Timing.TokenLifetime.Duration == 0 {
		c.Timing.TokenLifetime = D(time.Hour)
	}
	if c.Timing.IMDSTokenLifetime.Duration == 0 {
		c.Timing.IMDSTokenLifetime = D(24 * time.Hour)
	}
	if c.Logger.GetSink() == nil {
		c.Logger = logr.Discard()
	}
}

func (c *Config) validate() error {
	var errs []error
	seen := map[string]bool{}
	check := func(kind, name string) {
		if name == "" {
			errs = append(errs, &ConfigError{kind + " without a name: give every " + kind + " a name"})
			return
		}
		k := strings.ToLower(kind + "/" + name)
		if seen[k] {
			errs = append(errs, &ConfigError{fmt.Sprintf("%s %q is defined twice: names must be unique", kind, name)})
		}
		seen[k] = true
	}
	for _, v := range c.VirtualMachines {
		check("virtual machine", v.Name)
	}
	for _, v := range c.VirtualMachineScaleSets {
		check("scale set", v.Name)
		if v.Instances < 0 {
			errs = append(errs, &ConfigError{fmt.Sprintf("scale set %q has %d instances: use 0 or more", v.Name, v.Instances)})
		}
	}
	for _, v := range c.UserAssignedIdentities {
		check("identity", v.Name)
	}
	for _, p := range c.ServicePrincipals {
		if p.AppID == "" {
			errs = append(errs, &ConfigError{"service principal without appID: set appID to a GUID"})
		}
	}
	for _, a := range c.AppRegistrations {
		if a.ClientID == "" {
			errs = append(errs, &ConfigError{"app registration without clientID: set clientID to a GUID"})
		}
	}
	return errors.Join(errs...)
}

// derivedGUID returns a stable GUID-shaped string for a seed, so the same config yields the same IDs.
func derivedGUID(seed string) string {
	h := sha1.Sum([]byte(strings.ToLower(seed)))
	x := hex.EncodeToString(h[:16])
	return x[0:8] + "-" + x[8:12] + "-5" + x[13:16] + "-a" + x[17:20] + "-" + x[20:32]
}
