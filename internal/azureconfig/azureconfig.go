// Package azureconfig reads MIC's Azure settings as upstream did: the cloud-provider azure.json
// (--cloudconfig), or environment variables when there is no file, plus custom-cloud endpoints
// from the file named by AZURE_ENVIRONMENT_FILEPATH. Watch notices when any of these files change
// so that callers can rebuild their clients (rotated secrets must not need a restart).
package azureconfig

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"sigs.k8s.io/yaml"
)

// Config is the subset of azure.json MIC reads. JSON names are those of cloud-provider-azure.
type Config struct {
	Cloud                       string `json:"cloud"`
	TenantID                    string `json:"tenantId"`
	AADClientID                 string `json:"aadClientId"`
	AADClientSecret             string `json:"aadClientSecret"`
	SubscriptionID              string `json:"subscriptionId"`
	ResourceGroup               string `json:"resourceGroup"`
	VMType                      string `json:"vmType"`
	UseManagedIdentityExtension bool   `json:"useManagedIdentityExtension"`
	UserAssignedIdentityID      string `json:"userAssignedIdentityID"`
}

// Environment names the endpoints of one Azure cloud. JSON names are those of the go-autorest
// environment file that AZURE_ENVIRONMENT_FILEPATH points at (other fields are ignored).
type Environment struct {
	Name                    string `json:"name"`
	ResourceManagerEndpoint string `json:"resourceManagerEndpoint"`
	ActiveDirectoryEndpoint string `json:"activeDirectoryEndpoint"`
	// TokenAudience is the ARM token audience; empty means the ARM endpoint.
	TokenAudience string `json:"tokenAudience"`
	// CABundle is a podidentity extension: a PEM file with extra CAs to trust for ARM and AAD
	// (private clouds, the test emulator).
	CABundle string `json:"caBundle,omitempty"`
}

// Settings is everything needed to reach ARM.
type Settings struct {
	Config Config
	Env    Environment
	// CAs is the pool to trust when Env.CABundle is set (system roots plus the bundle).
	CAs *x509.CertPool
	// Files are the paths the settings came from, and Fingerprint their contents when read,
	// for Watch (a change between Load and Watch is then not missed).
	Files       []string
	Fingerprint string
}

// EnvironmentFileVar is the variable naming a custom cloud's environment file.
const EnvironmentFileVar = "AZURE_ENVIRONMENT_FILEPATH"

// ErrConfig marks invalid or incomplete configuration.
var ErrConfig = errors.New("invalid Azure configuration")

var knownClouds = map[string]Environment{
	"azurepubliccloud": {Name: "AzurePublicCloud", ResourceManagerEndpoint: "https://management.azure.com/",
		ActiveDirectoryEndpoint: "https://login.microsoftonline.com/", TokenAudience: "https://management.azure.com/"},
	"azureusgovernmentcloud": {Name: "AzureUSGovernmentCloud", ResourceManagerEndpoint: "https://management.usgovcloudapi.net/",
		ActiveDirectoryEndpoint: "https://login.microsoftonline.us/", TokenAudience: "https://management.usgovcloudapi.net/"},
	"azurechinacloud": {Name: "AzureChinaCloud", ResourceManagerEndpoint: "https://management.chinacloudapi.cn/",
		ActiveDirectoryEndpoint: "https://login.chinacloudapi.cn/", TokenAudience: "https://management.chinacloudapi.cn/"},
}

// Load reads the settings: the azure.json at path, or environment variables when path is empty
// (CLOUD, TENANT_ID, CLIENT_ID, CLIENT_SECRET, SUBSCRIPTION_ID, RESOURCE_GROUP, VM_TYPE, USE_MSI,
// USER_ASSIGNED_MSI_CLIENT_ID), then the cloud's endpoints. getenv is os.Getenv in production.
func Load(path string, getenv func(string) string) (*Settings, error) {
	s := &Settings{}
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("reading --cloudconfig %s: %w; mount the cluster's azure.json there or leave the flag empty to use environment variables", path, err)
		}
		if err := yaml.Unmarshal(b, &s.Config); err != nil {
			return nil, fmt.Errorf("parsing --cloudconfig %s: %w: %w", path, err, ErrConfig)
		}
		s.Files = append(s.Files, path)
	} else {
		s.Config = Config{
			Cloud: getenv("CLOUD"), TenantID: getenv("TENANT_ID"), AADClientID: getenv("CLIENT_ID"),
			AADClientSecret: getenv("CLIENT_SECRET"), SubscriptionID: getenv("SUBSCRIPTION_ID"),
			ResourceGroup: getenv("RESOURCE_GROUP"), VMType: getenv("VM_TYPE"),
			UseManagedIdentityExtension: strings.EqualFold(getenv("USE_MSI"), "true"),
			UserAssignedIdentityID:      getenv("USER_ASSIGNED_MSI_CLIENT_ID"),
		}
	}
	env, files, cas, err := loadEnvironment(s.Config.Cloud, getenv)
	if err != nil {
		return nil, err
	}
	s.Env, s.CAs = env, cas
	s.Files = append(s.Files, files...)
	s.Fingerprint = Fingerprint(s.Files)
	return s, s.validate()
}

func loadEnvironment(cloudName string, getenv func(string) string) (Environment, []string, *x509.CertPool, error) {
	if p := getenv(EnvironmentFileVar); p != "" && (cloudName == "" || strings.EqualFold(cloudName, "AzureStackCloud")) {
		b, err := os.ReadFile(p)
		if err != nil {
			return Environment{}, nil, nil, fmt.Errorf("reading %s=%s: %w", EnvironmentFileVar, p, err)
		}
		var env Environment
		if err := yaml.Unmarshal(b, &env); err != nil {
			return Environment{}, nil, nil, fmt.Errorf("parsing %s=%s: %w: %w", EnvironmentFileVar, p, err, ErrConfig)
		}
		if env.ResourceManagerEndpoint == "" || env.ActiveDirectoryEndpoint == "" {
			return Environment{}, nil, nil, fmt.Errorf("%s=%s must set resourceManagerEndpoint and activeDirectoryEndpoint: %w", EnvironmentFileVar, p, ErrConfig)
		}
		if env.TokenAudience == "" {
			env.TokenAudience = env.ResourceManagerEndpoint
		}
		files := []string{p}
		var pool *x509.CertPool
		if env.CABundle != "" {
			pem, err := os.ReadFile(env.CABundle)
			if err != nil {
				return Environment{}, nil, nil, fmt.Errorf("reading caBundle %s named in %s: %w", env.CABundle, p, err)
			}
			if pool, err = x509.SystemCertPool(); err != nil || pool == nil {
				pool = x509.NewCertPool()
			}
			if !pool.AppendCertsFromPEM(pem) {
				return Environment{}, nil, nil, fmt.Errorf("caBundle %s named in %s holds no PEM certificate: %w", env.CABundle, p, ErrConfig)
			}
			files = append(files, env.CABundle)
		}
		return env, files, pool, nil
	}
	name := cloudName
	if name == "" {
		name = "AzurePublicCloud"
	}
	env, ok := knownClouds[strings.ToLower(name)]
	if !ok {
		return Environment{}, nil, nil, fmt.Errorf("cloud %q is not one of AzurePublicCloud, AzureUSGovernmentCloud, AzureChinaCloud, or AzureStackCloud with %s: %w", name, EnvironmentFileVar, ErrConfig)
	}
	return env, nil, nil, nil
}

// AuthMode says how MIC authenticates to ARM.
type AuthMode int

const (
	// AuthServicePrincipal uses aadClientId + aadClientSecret.
	AuthServicePrincipal AuthMode = iota
	// AuthSystemMSI uses the node's system-assigned identity through IMDS.
	AuthSystemMSI
	// AuthUserMSI uses the user-assigned identity userAssignedIdentityID through IMDS.
	AuthUserMSI
)

// Auth picks the authentication mode as upstream: managed identity when
// useManagedIdentityExtension is set (user-assigned when userAssignedIdentityID is), else the
// service principal.
func (s *Settings) Auth() AuthMode {
	switch {
	case s.Config.UseManagedIdentityExtension && s.Config.UserAssignedIdentityID != "":
		return AuthUserMSI
	case s.Config.UseManagedIdentityExtension:
		return AuthSystemMSI
	}
	return AuthServicePrincipal
}

func (s *Settings) validate() error {
	var missing []string
	if s.Config.SubscriptionID == "" {
		missing = append(missing, "subscriptionId (SUBSCRIPTION_ID)")
	}
	if s.Config.ResourceGroup == "" {
		missing = append(missing, "resourceGroup (RESOURCE_GROUP)")
	}
	if s.Auth() == AuthServicePrincipal {
		if s.Config.TenantID == "" {
			missing = append(missing, "tenantId (TENANT_ID)")
		}
		if s.Config.AADClientID == "" || s.Config.AADClientSecret == "" {
			missing = append(missing, "aadClientId and aadClientSecret (CLIENT_ID, CLIENT_SECRET), or useManagedIdentityExtension: true (USE_MSI=true)")
		}
	}
	if len(missing) > 0 {
		//lint:ignore ST1005 "Azure" is a proper noun.
		return fmt.Errorf("Azure configuration lacks %s: %w", strings.Join(missing, ", "), ErrConfig)
	}
	return nil
}

// Fingerprint hashes the contents of files, so that a change (including a Kubernetes Secret's
// symlink swap) is noticed whatever the file system reports.
func Fingerprint(files []string) string {
	h := sha256.New()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			fmt.Fprintf(h, "%s:missing:%v;", f, err)
			continue
		}
		fmt.Fprintf(h, "%s:%d:", f, len(b))
		h.Write(b)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// Watch polls files every interval and calls onChange after their contents differ from the
// fingerprint last (Settings.Fingerprint), until ctx ends. Polling, rather than inotify, also sees
// ConfigMap/Secret volume updates, which replace a symlink instead of writing the file.
func Watch(ctx context.Context, log logr.Logger, files []string, last string, interval time.Duration, onChange func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if fp := Fingerprint(files); fp != last {
				last = fp
				log.Info("Azure configuration changed; rebuilding ARM clients", "files", files)
				onChange()
			}
		}
	}
}
