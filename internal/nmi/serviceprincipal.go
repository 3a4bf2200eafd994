package nmi

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	toolscache "k8s.io/client-go/tools/cache"
	"software.sslmate.com/src/go-pkcs12"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// DefaultAuthorityHost is Azure AD's public-cloud authority, used when an identity names none.
const DefaultAuthorityHost = "https://login.microsoftonline.com/"

// SecretGetter returns a Secret from a local cache (never a GET per token request).
type SecretGetter interface {
	// GetSecret returns the Secret, or nil when it does not exist.
	GetSecret(ctx context.Context, namespace, name string) (*corev1.Secret, error)
}

// ServicePrincipalSource gets tokens for service principals (types 1 and 2) from Azure AD.
type ServicePrincipalSource struct {
	Secrets SecretGetter
	// AuthorityHost is used when an identity has no adEndpoint (custom clouds set it).
	AuthorityHost string
	// ClientOptions carries the transport (e.g. a CA to trust) and retry settings for Azure AD.
	ClientOptions azcore.ClientOptions
}

// secretNamespace is the namespace of the Secret an identity references: its own unless the
// reference names one.
func secretNamespace(id *aadv1.AzureIdentity) string {
	if ns := id.Spec.ClientPassword.Namespace; ns != "" {
		return ns
	}
	return id.Namespace
}

// secretKey is the namespace/name of the Secret a service-principal identity references, or ""
// for other identities.
func secretKey(id *aadv1.AzureIdentity) string {
	if id.Spec.Type == aadv1.UserAssignedMSI || id.Spec.ClientPassword.Name == "" {
		return ""
	}
	return secretNamespace(id) + "/" + id.Spec.ClientPassword.Name
}

// secretFor returns the Secret an identity references.
func (s *ServicePrincipalSource) secretFor(ctx context.Context, id *aadv1.AzureIdentity) (*corev1.Secret, error) {
	ns, name := secretNamespace(id), id.Spec.ClientPassword.Name
	if name == "" {
		return nil, fmt.Errorf("%w: AzureIdentity %s/%s (type %d) has no spec.clientPassword.name: name the Secret with its credentials", ErrCredential, id.Namespace, id.Name, id.Spec.Type)
	}
	sec, err := s.Secrets.GetSecret(ctx, ns, name)
	if err != nil {
		return nil, fmt.Errorf("%w: reading Secret %s/%s of AzureIdentity %s/%s: %v", ErrUnavailable, ns, name, id.Namespace, id.Name, err)
	}
	if sec == nil {
		return nil, fmt.Errorf("%w: Secret %s/%s referenced by AzureIdentity %s/%s does not exist: create it", ErrUnavailable, ns, name, id.Namespace, id.Name)
	}
	return sec, nil
}

// credentialVersion identifies the credentials an identity uses now (the Secret's
// resourceVersion), so that a rotated Secret never serves tokens cached from the old one.
func (s *ServicePrincipalSource) credentialVersion(ctx context.Context, id *aadv1.AzureIdentity) (string, error) {
	sec, err := s.secretFor(ctx, id)
	if err != nil {
		return "", err
	}
	return string(sec.UID) + "@" + sec.ResourceVersion, nil
}

func (s *ServicePrincipalSource) authority(id *aadv1.AzureIdentity) string {
	if id.Spec.ADEndpoint != "" {
		return id.Spec.ADEndpoint
	}
	if s.AuthorityHost != "" {
		return s.AuthorityHost
	}
	return DefaultAuthorityHost
}

// Fetch does the client-credentials flow: with the client secret (type 1; one token per tenant,
// primary first, when auxiliaryTenantIDs are set) or the PKCS#12 certificate (type 2).
func (s *ServicePrincipalSource) Fetch(ctx context.Context, id *aadv1.AzureIdentity, resource string) ([]Token, error) {
	sec, err := s.secretFor(ctx, id)
	if err != nil {
		return nil, err
	}
	opts := s.ClientOptions
	opts.Cloud = cloud.Configuration{ActiveDirectoryAuthorityHost: s.authority(id)}
	// Our cache does the retrying; the SDK's retries would hold a request far beyond its budget.
	opts.Retry = policy.RetryOptions{MaxRetries: -1}
	var cred azcore.TokenCredential
	switch id.Spec.Type {
	case aadv1.ServicePrincipal:
		secret := clientSecretOf(sec)
		if secret == "" {
			return nil, fmt.Errorf("%w: Secret %s/%s of AzureIdentity %s/%s has no key clientSecret (other keys are never read): put the client secret under key clientSecret", ErrCredential, sec.Namespace, sec.Name, id.Namespace, id.Name)
		}
		cred, err = azidentity.NewClientSecretCredential(id.Spec.TenantID, id.Spec.ClientID, secret, &azidentity.ClientSecretCredentialOptions{
			ClientOptions: opts, DisableInstanceDiscovery: true, AdditionallyAllowedTenants: id.Spec.AuxiliaryTenantIDs})
	case aadv1.ServicePrincipalCertificate:
		data, ok := sec.Data["certificate"]
		if !ok {
			return nil, fmt.Errorf("%w: Secret %s/%s of AzureIdentity %s/%s has no key certificate: put the PKCS#12 bundle there and its password under key password", ErrCredential, sec.Namespace, sec.Name, id.Namespace, id.Name)
		}
		certs, key, perr := parsePFX(data, string(sec.Data["password"]))
		if perr != nil {
			return nil, fmt.Errorf("%w: certificate in Secret %s/%s of AzureIdentity %s/%s cannot be read (%v): store a PKCS#12 bundle with its key under certificate and its password under password", ErrCredential, sec.Namespace, sec.Name, id.Namespace, id.Name, perr)
		}
		cred, err = azidentity.NewClientCertificateCredential(id.Spec.TenantID, id.Spec.ClientID, certs, key, &azidentity.ClientCertificateCredentialOptions{
			ClientOptions: opts, DisableInstanceDiscovery: true})
	default:
		return nil, fmt.Errorf("%w: AzureIdentity %s/%s has unsupported type %d: use 0, 1 or 2", ErrCredential, id.Namespace, id.Name, id.Spec.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: AzureIdentity %s/%s: %v", ErrCredential, id.Namespace, id.Name, err)
	}
	tenants := []string{""}
	if id.Spec.Type == aadv1.ServicePrincipal {
		tenants = append(tenants, id.Spec.AuxiliaryTenantIDs...)
	}
	out := make([]Token, 0, len(tenants))
	for _, tenant := range tenants {
		at, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{scopeOf(resource)}, TenantID: tenant})
		if err != nil {
			return nil, aadError(err, id, tenant)
		}
		out = append(out, Token{AccessToken: at.Token, ExpiresOn: at.ExpiresOn, NotBefore: time.Now(), Resource: resource,
			TokenType: "Bearer", ClientID: id.Spec.ClientID, ObjectID: objectIDOf(at.Token)})
	}
	return out, nil
}

// parsePFX reads a PKCS#12 bundle, including the SHA-256 MACs and AES encryption that current
// tools (OpenSSL 3, Azure Key Vault) write and that azidentity's own parser refuses; PEM input
// falls back to azidentity.
func parsePFX(data []byte, password string) ([]*x509.Certificate, crypto.PrivateKey, error) {
	key, cert, chain, err := pkcs12.DecodeChain(data, password)
	if err != nil {
		if certs, k, err2 := azidentity.ParseCertificates(data, []byte(password)); err2 == nil {
			return certs, k, nil
		}
		return nil, nil, err
	}
	return append([]*x509.Certificate{cert}, chain...), key, nil
}

// scopeOf turns a v1 resource into a v2 scope; a resource ending in "/" keeps it, which Azure AD
// reads as that exact audience.
func scopeOf(resource string) string { return resource + "/.default" }

// clientSecretKey is the one Secret key a type-1 identity's client secret is read from. Upstream
// fell back to "the first value" of the Secret, so any Secret could be used as a credential.
const clientSecretKey = "clientSecret"

func clientSecretOf(sec *corev1.Secret) string { return string(sec.Data[clientSecretKey]) }

// aadError classifies an azidentity failure: an Azure AD answer below 500 means the credentials
// are wrong (fail fast); anything else may heal.
func aadError(err error, id *aadv1.AzureIdentity, tenant string) error {
	if tenant == "" {
		tenant = id.Spec.TenantID
	}
	var afe *azidentity.AuthenticationFailedError
	if errors.As(err, &afe) && afe.RawResponse != nil {
		return &UpstreamError{Service: "aad", Status: afe.RawResponse.StatusCode, Code: "aad_error",
			Description: fmt.Sprintf("Azure AD refused client %s of AzureIdentity %s/%s in tenant %s: %s", id.Spec.ClientID, id.Namespace, id.Name, tenant, firstLine(err.Error()))}
	}
	return &UpstreamError{Service: "aad", Status: 0, Code: "aad_unavailable",
		Description: fmt.Sprintf("getting a token for AzureIdentity %s/%s in tenant %s: %s", id.Namespace, id.Name, tenant, firstLine(err.Error()))}
}

// firstLine condenses an azidentity error to its first lines, bounded (Azure AD's answer may be
// anything, of any length).
func firstLine(s string) string {
	s = strings.TrimSpace(s)
	var parts []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "---") && !strings.HasPrefix(l, "To troubleshoot") {
			parts = append(parts, l)
		}
		if len(parts) == 4 {
			break
		}
	}
	return string(clipBytes([]byte(strings.Join(parts, " "))))
}

// SecretWatcher keeps one watch per Secret that an identity references: NMI needs few Secrets,
// and watching all of them cluster-wide would cost memory and RBAC breadth. Watches of Secrets no
// identity references any more are stopped (Retain).
type SecretWatcher struct {
	Client kubernetes.Interface
	ctx    context.Context

	mu      sync.Mutex
	watches map[string]*secretWatch
	// OnChange is called when a watched Secret changes (to wake waiters, invalidate caches).
	OnChange func()
}

type secretWatch struct {
	inf  toolscache.SharedIndexInformer
	ctx  context.Context // ends when the watch is stopped
	stop context.CancelFunc
}

// NewSecretWatcher returns a watcher whose watches stop when ctx ends.
func NewSecretWatcher(ctx context.Context, c kubernetes.Interface) *SecretWatcher {
	return &SecretWatcher{Client: c, ctx: ctx, watches: map[string]*secretWatch{}}
}

// Watching returns the namespace/name of every Secret watched now.
func (w *SecretWatcher) Watching() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Sorted(maps.Keys(w.watches))
}

// Retain stops the watches of Secrets not in keep (namespace/name).
func (w *SecretWatcher) Retain(keep map[string]bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, sw := range w.watches {
		if !keep[k] {
			sw.stop()
			delete(w.watches, k)
		}
	}
}

// RetainReferenced keeps only the watches of Secrets the store's identities reference, checked
// at most once a second after changes of the store, until ctx ends.
func (w *SecretWatcher) RetainReferenced(ctx context.Context, st *Store) {
	for {
		changed := st.Changed()
		w.Retain(st.SecretRefs())
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
		// Pods change far more often than identities: one check covers a burst of changes.
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// GetSecret returns the Secret from its watch, starting the watch on first use.
func (w *SecretWatcher) GetSecret(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
	key := namespace + "/" + name
	for {
		sw := w.watch(namespace, name)
		if !sw.inf.HasSynced() {
			// Also stop waiting when Retain stops this watch meanwhile (the identity was deleted
			// and re-created, say): then a new watch is started.
			wait, cancel := context.WithCancel(ctx)
			stopWaiting := context.AfterFunc(sw.ctx, cancel)
			synced := toolscache.WaitForCacheSync(wait.Done(), sw.inf.HasSynced)
			stopWaiting()
			cancel()
			if !synced {
				if ctx.Err() == nil && w.ctx.Err() == nil && sw.ctx.Err() != nil {
					continue
				}
				return nil, fmt.Errorf("watch of Secret %s did not sync before the request ended: check that NMI may list/watch Secrets in namespace %s (with the chart: add it to rbac.secretNamespaces) and that the API server is reachable", key, namespace)
			}
		}
		obj, ok, err := sw.inf.GetStore().GetByKey(key)
		if err != nil || !ok {
			return nil, err
		}
		return obj.(*corev1.Secret), nil
	}
}

// watch returns the running watch of a Secret, starting it if needed.
func (w *SecretWatcher) watch(namespace, name string) *secretWatch {
	key := namespace + "/" + name
	w.mu.Lock()
	defer w.mu.Unlock()
	if sw := w.watches[key]; sw != nil {
		return sw
	}
	lw := toolscache.NewListWatchFromClient(w.Client.CoreV1().RESTClient(), "secrets", namespace,
		fields.OneTermEqualSelector("metadata.name", name))
	inf := toolscache.NewSharedIndexInformer(lw, &corev1.Secret{}, 0, toolscache.Indexers{})
	if w.OnChange != nil {
		f := func(any) { w.OnChange() }
		_, _ = inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{AddFunc: f, DeleteFunc: f,
			UpdateFunc: func(any, any) { w.OnChange() }})
	}
	wctx, stop := context.WithCancel(w.ctx)
	sw := &secretWatch{inf: inf, ctx: wctx, stop: stop}
	w.watches[key] = sw
	go inf.RunWithContext(wctx)
	return sw
}
