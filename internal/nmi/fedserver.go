package nmi

import (
	"fmt"

	"k8s.io/apimachinery/pkg/types"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/nmi/imdsreq"
)

// subjectFor is whose ServiceAccount token a federated identity presents for pod: the pod's own
// ServiceAccount, bound to the pod, or for broker identities NMI's own, bound to NMI's pod.
func (s *Server) subjectFor(pod *podInfo, id *aadv1.AzureIdentity) (fedSubject, error) {
	if id.Spec.Federation.IsBroker() {
		b := s.cfg.Broker
		if missing := b.missing(); missing != "" {
			return fedSubject{}, fmt.Errorf("%w: AzureIdentity %s/%s uses the broker subject, which needs NMI's own pod and ServiceAccount, but %s is not set: set the env vars POD_NAME, POD_NAMESPACE and POD_UID from the downward API and --service-account-name (or SERVICE_ACCOUNT_NAME), or use spec.federation.subject ServiceAccount",
				ErrCredential, id.Namespace, id.Name, missing)
		}
		return fedSubject{sa: types.NamespacedName{Namespace: b.Namespace, Name: b.ServiceAccount}, pod: b.PodName, podUID: b.PodUID}, nil
	}
	if pod == nil {
		return fedSubject{}, fmt.Errorf("%w: AzureIdentity %s/%s is federated: its tokens are for a pod's ServiceAccount, and no pod asked", ErrCredential, id.Namespace, id.Name)
	}
	return fedSubject{sa: types.NamespacedName{Namespace: pod.Namespace, Name: pod.ServiceAccount}, pod: pod.Name, podUID: pod.UID}, nil
}

// federationAuthority is where a federated identity's exchange goes: spec.federation.authorityHost,
// else spec.adEndpoint, else the configured cloud's (checkPolicy allows only permitted hosts).
func (s *Server) federationAuthority(id *aadv1.AzureIdentity) string {
	if f := id.Spec.Federation; f != nil && f.AuthorityHost != "" {
		return f.AuthorityHost
	}
	if id.Spec.ADEndpoint != "" {
		return id.Spec.ADEndpoint
	}
	return s.cfg.authorityHost()
}

// federationTenant is spec.tenantID, else --federation-default-tenant-id.
func (s *Server) federationTenant(id *aadv1.AzureIdentity) string {
	if id.Spec.TenantID != "" {
		return id.Spec.TenantID
	}
	return s.cfg.FederationDefaultTenantID
}

// checkFederation refuses federated identities that cannot work as configured.
func (s *Server) checkFederation(id *aadv1.AzureIdentity) error {
	if s.federationTenant(id) == "" {
		return fmt.Errorf("%w: federated AzureIdentity %s/%s has no spec.tenantID and this NMI has no --federation-default-tenant-id: set spec.tenantID to the identity's tenant", ErrCredential, id.Namespace, id.Name)
	}
	if id.Spec.ClientID == "" {
		return fmt.Errorf("%w: federated AzureIdentity %s/%s has no spec.clientID: set it to the identity's client (application) ID", ErrCredential, id.Namespace, id.Name)
	}
	if ep := id.Spec.Federation.AuthorityHost; ep != "" && !s.authorities.allows(ep) {
		return fmt.Errorf("%w: AzureIdentity %s/%s has spec.federation.authorityHost %s, which is not an allowed Azure AD authority (allowed: %s): leave it empty or use one of those, or ask the cluster operator to add the host to --allowed-ad-endpoints (chart value nmi.allowedADEndpoints)",
			ErrRefused, id.Namespace, id.Name, imdsreq.Clip(ep), s.authorities)
	}
	return nil
}

// podRunning prefetches, for a pod that has just become Running, the tokens of every federated
// identity bound to it (no assignment to wait for), so that its first request is a cache hit.
func (s *Server) podRunning(pod *podInfo) {
	bound, _ := s.store.grants(pod, s.rules())
	for _, g := range bound {
		if !g.id.Spec.IsFederated() || s.checkPolicy(g.id) != nil {
			continue
		}
		for _, r := range s.prefetchResources(g.id) {
			s.prefetchAsync(pod, g.id, r)
		}
	}
}

// podGone drops what NMI keeps for a pod that left the node: its rate limiter, its
// ServiceAccount tokens, and the Azure AD tokens of its ServiceAccount once no pod of that
// ServiceAccount is left on the node (Azure AD authorized the ServiceAccount, not the identity).
func (s *Server) podGone(pod *podInfo) {
	s.limits.forget(pod.UID)
	s.fed.tokens.forgetPod(pod.UID)
	sa := types.NamespacedName{Namespace: pod.Namespace, Name: pod.ServiceAccount}
	if s.store.hasPodOfServiceAccount(sa) {
		return
	}
	n := s.cache.forget(func(k cacheKey) bool {
		return k.cred.kind == credFederated && k.cred.subject == sa && !s.isBrokerSubject(sa)
	})
	if n > 0 {
		s.log.V(1).Info("dropped the federated tokens of a ServiceAccount without pods on this node", "serviceAccount", sa.String(), "tokens", n)
	}
}

// isBrokerSubject: NMI's own ServiceAccount's tokens serve every broker identity, whatever pod
// leaves.
func (s *Server) isBrokerSubject(sa types.NamespacedName) bool {
	b := s.cfg.Broker
	return b.Namespace == sa.Namespace && b.ServiceAccount == sa.Name
}

// bindingRules are the matching rules of a node's configuration: the bindings' and, optionally,
// Azure Workload Identity's ServiceAccount annotations.
type bindingRules struct {
	binding.Options
	honorWorkloadIdentity bool
}

// rules are this node's matching rules.
func (s *Server) rules() bindingRules {
	return bindingRules{Options: binding.Options{
		ForceNamespaced:       s.cfg.ForceNamespaced || s.cfg.OperationMode == ModeManaged,
		RequireServiceAccount: s.cfg.RequireServiceAccountBindings,
	}, honorWorkloadIdentity: s.cfg.HonorWorkloadIdentityAnnotations}
}
