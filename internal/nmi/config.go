package nmi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Operation modes (--operation-mode).
const (
	ModeStandard = "standard"
	ModeManaged  = "managed"
)

// Config is everything NMI needs (the server's settings, then what Run wires); cmd/nmi fills it
// from flags.
type Config struct {
	// NodeName is this node: only its pods and assignments are watched.
	NodeName string
	// MetadataIP and MetadataPort address the real IMDS (proxy target and token source).
	MetadataIP   string
	MetadataPort int
	// MetadataHeaderRequired refuses token and proxied requests without "Metadata: true".
	MetadataHeaderRequired bool
	// BlockInstanceMetadata answers 403 on /metadata/instance*.
	BlockInstanceMetadata bool
	// OperationMode is ModeStandard (identities from MIC's assignments) or ModeManaged
	// (from bindings and identities in the pod's namespace; requires ForceNamespaced).
	OperationMode string
	// ForceNamespaced restricts every identity to pods of its own namespace.
	ForceNamespaced bool
	// RequireServiceAccountBindings ignores bindings without spec.serviceAccountName: a pod
	// only they select is refused, with a Warning event on them.
	RequireServiceAccountBindings bool
	// MICNamespace and MICServiceAccount identify MIC's pods, which get IMDS passthrough: a pod
	// in that namespace running as that ServiceAccount. Empty MICServiceAccount: no pod does.
	MICNamespace      string
	MICServiceAccount string
	// AllowCrossNamespaceSecrets lets a service-principal identity use a Secret in another
	// namespace (spec.clientPassword.namespace). Never honoured for namespaced identities.
	AllowCrossNamespaceSecrets bool
	// ServeDeletingPods keeps serving a pod in its termination grace period (deletionTimestamp
	// set, containers running) while no other pod claims its IP. Off by default: the new owner
	// of a reused IP may not be visible yet.
	ServeDeletingPods bool
	// AllowedADEndpoints are Azure AD authorities an identity's spec.adEndpoint may name besides
	// the configured cloud's (AuthorityHost): https URLs or host[:port].
	AllowedADEndpoints []string
	// RetryAttemptsForCreated × FindIdentityRetryInterval bounds the wait for an assignment to
	// appear; (created + assigned) × interval the wait for it to become Assigned.
	RetryAttemptsForCreated   int
	RetryAttemptsForAssigned  int
	FindIdentityRetryInterval time.Duration
	// SetRetryAfterHeader answers 503 + Retry-After at once instead of waiting.
	SetRetryAfterHeader bool
	// RetryAfter is the Retry-After value of those answers.
	RetryAfter time.Duration
	// PodWaitTimeout bounds the wait for an unknown caller IP to show up in the pod watch (a pod
	// that has just started).
	PodWaitTimeout time.Duration
	// ViewSettle is how long a watch re-established after an interruption must have run before
	// NMI answers from its view again without confirming each grant with the API server.
	ViewSettle time.Duration
	// IMDSMaxConcurrent caps concurrent calls to IMDS (IMDS allows 5 per VM).
	IMDSMaxConcurrent int
	// PodRateLimit (requests/s; 0 = unlimited) and PodRateBurst limit each pod's requests that
	// reach Azure (cache misses and passthrough); cached answers are not limited.
	PodRateLimit float64
	PodRateBurst int
	// PrefetchResources are fetched for an identity as soon as it is Assigned (federated: as
	// soon as a bound pod is Running), besides the resources pods already asked for with it.
	PrefetchResources []string
	// PrefetchBudget bounds how long a prefetch keeps retrying while IMDS does not know the
	// identity yet (propagation).
	PrefetchBudget time.Duration
	// Cache tunes the token cache.
	Cache CacheOptions
	// AuthorityHost is the Azure AD host for service principals without adEndpoint.
	AuthorityHost string
	// AADClientOptions are used for Azure AD calls (transport, e.g. a custom CA).
	AADClientOptions azcore.ClientOptions
	// Events receives Warning events about identities NMI refuses (nil: none are recorded).
	Events EventSink

	// KubeClient mints ServiceAccount tokens for federated identities (TokenRequest API); nil:
	// federated identities are refused with a clear error.
	KubeClient kubernetes.Interface
	// FederationPropagationWindow: Azure AD's "no matching federated credential" within this
	// long of the newest creation of the identity, binding and pod is answered 503 + Retry-After
	// (a new credential takes a while to be seen); later, 403 with the command that creates it.
	// Zero: always 403.
	FederationPropagationWindow time.Duration
	// FederationDefaultTenantID is the tenant of federated identities without spec.tenantID.
	FederationDefaultTenantID string
	// HonorWorkloadIdentityAnnotations gives a pod that no binding selects the implicit federated
	// identity its ServiceAccount's azure.workload.identity/client-id annotation names.
	HonorWorkloadIdentityAnnotations bool
	// Broker is NMI's own pod and ServiceAccount, whose tokens broker identities present.
	Broker Broker

	// The rest is what Run wires besides the server's settings.

	// RestConfig reaches the API server for the watches (and builds KubeClient when that is nil).
	RestConfig *rest.Config
	// ListenAddress is the token server's host:port (port 0: any free one; Agent.Addr tells).
	ListenAddress string
	// ShutdownGrace is how long Run keeps serving once ctx ended (and Redirect returned) before it
	// stops accepting and waits for in-flight requests.
	ShutdownGrace time.Duration
	// Metrics receives NMI's metrics (nil: a set registered nowhere).
	Metrics *Metrics
	// Log is NMI's logger (zero value: discard).
	Log logr.Logger
	// Redirect, when set, runs once the watches synced and the token server serves (cmd/nmi: the
	// iptables keeper and the readiness it reports) and returns after ctx ended. Run stops serving
	// only after it returned, so pods are answered while it decides about the rules; its error
	// ends Run.
	Redirect func(ctx context.Context) error
}

// BrokerFromEnv reads NMI's own pod from the downward API's env vars (POD_NAME, POD_NAMESPACE,
// POD_UID) and its ServiceAccount from --service-account-name.
func BrokerFromEnv(getenv func(string) string, serviceAccount string) Broker {
	return Broker{PodName: getenv("POD_NAME"), Namespace: getenv("POD_NAMESPACE"), PodUID: types.UID(getenv("POD_UID")), ServiceAccount: serviceAccount}
}

// Broker is NMI's own pod (downward API: POD_NAME, POD_NAMESPACE, POD_UID) and ServiceAccount.
type Broker struct {
	Namespace, PodName, ServiceAccount string
	PodUID                             types.UID
}

// missing names the first unset field, as the setting that fills it ("" when complete).
func (b Broker) missing() string {
	switch {
	case b.PodName == "":
		return "POD_NAME"
	case b.Namespace == "":
		return "POD_NAMESPACE"
	case b.PodUID == "":
		return "POD_UID"
	case b.ServiceAccount == "":
		return "--service-account-name"
	}
	return ""
}

// SetDefaults fills zero values with upstream's defaults.
func (c *Config) SetDefaults() {
	if c.MetadataIP == "" {
		c.MetadataIP = "169.254.169.254"
	}
	if c.MetadataPort == 0 {
		c.MetadataPort = 80
	}
	if c.OperationMode == "" {
		c.OperationMode = ModeStandard
	}
	if c.MICNamespace == "" {
		c.MICNamespace = "default"
	}
	if c.FindIdentityRetryInterval == 0 {
		c.FindIdentityRetryInterval = 5 * time.Second
	}
	if c.RetryAfter == 0 {
		c.RetryAfter = 20 * time.Second
	}
	if c.PodWaitTimeout == 0 {
		c.PodWaitTimeout = 2 * time.Second
	}
	if c.ViewSettle == 0 {
		c.ViewSettle = DefaultViewSettle
	}
	if c.IMDSMaxConcurrent == 0 {
		c.IMDSMaxConcurrent = 5
	}
	if c.PrefetchBudget == 0 {
		c.PrefetchBudget = 2 * time.Minute
	}
}

// Validate reports configuration mistakes, naming the flag to fix.
func (c *Config) Validate() error {
	var errs []error
	if c.NodeName == "" {
		errs = append(errs, errors.New("--node is required: set it to the node's name (e.g. from the NODE_NAME env var via the downward API)"))
	}
	c.OperationMode = strings.ToLower(c.OperationMode)
	switch c.OperationMode {
	case ModeStandard:
	case ModeManaged:
		if !c.ForceNamespaced {
			errs = append(errs, errors.New("--operation-mode=managed requires namespaced mode: add --forceNamespaced=true (or FORCENAMESPACED=true)"))
		}
	default:
		errs = append(errs, fmt.Errorf("--operation-mode=%q is not supported: use standard or managed", c.OperationMode))
	}
	if net.ParseIP(c.MetadataIP) == nil {
		errs = append(errs, fmt.Errorf("--metadata-ip=%q is not an IP address", c.MetadataIP))
	}
	if c.MetadataPort <= 0 || c.MetadataPort > 65535 {
		errs = append(errs, fmt.Errorf("--metadata-port=%d is not a port number", c.MetadataPort))
	}
	if c.RetryAttemptsForCreated < 0 || c.RetryAttemptsForAssigned < 0 || c.FindIdentityRetryInterval < 0 {
		errs = append(errs, errors.New("--retry-attempts-for-created, --retry-attempts-for-assigned and --find-identity-retry-interval must not be negative"))
	}
	if c.PodRateLimit < 0 || c.PodRateBurst < 0 {
		errs = append(errs, errors.New("the per-pod rate limit and burst must not be negative"))
	}
	if _, err := newAuthorities(c.authorityHost(), c.AllowedADEndpoints); err != nil {
		errs = append(errs, err)
	}
	if c.FederationPropagationWindow < 0 {
		errs = append(errs, fmt.Errorf("--federation-propagation-window=%s must not be negative (0: no window)", c.FederationPropagationWindow))
	}
	if c.PodRateLimit > 0 && c.PodRateBurst < 1 {
		errs = append(errs, errors.New("a per-pod rate limit needs a burst of at least 1"))
	}
	return errors.Join(errs...)
}

// authorityHost is the Azure AD authority of the configured cloud.
func (c *Config) authorityHost() string {
	if c.AuthorityHost != "" {
		return c.AuthorityHost
	}
	return DefaultAuthorityHost
}
