package nmi

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// Azure Workload Identity's ServiceAccount annotations, honoured with
// --honor-workload-identity-annotations.
const (
	WorkloadIdentityClientIDAnnotation = "azure.workload.identity/client-id"
	WorkloadIdentityTenantIDAnnotation = "azure.workload.identity/tenant-id"
)

// serviceAccountHandler feeds ServiceAccounts' metadata (a metadata-only informer: their
// annotations are all NMI reads) into the store.
func serviceAccountHandler(store *Store) watchHandler {
	obj := &metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"}}
	return watchHandler{obj, func(o any) {
		if m, ok := o.(*metav1.PartialObjectMetadata); ok {
			store.UpsertServiceAccount(m)
		}
	}, store.DeleteServiceAccount}
}

// implicitIdentity is the federated identity Azure Workload Identity's annotations give the
// pods of a ServiceAccount: the application (or user-assigned identity) named by client-id,
// presenting the ServiceAccount's own token. Type 1 semantics: no resource ID is known to check a
// managed identity's xms_mirid against, and Azure AD decides by its federated credentials.
func implicitIdentity(sa *metav1.PartialObjectMetadata) *aadv1.AzureIdentity {
	clientID := sa.Annotations[WorkloadIdentityClientIDAnnotation]
	if clientID == "" {
		return nil
	}
	return &aadv1.AzureIdentity{
		// The ServiceAccount's resourceVersion: what confirmGrant compares.
		ObjectMeta: metav1.ObjectMeta{Namespace: sa.Namespace, Name: "workload-identity:" + sa.Name, CreationTimestamp: sa.CreationTimestamp,
			ResourceVersion: sa.ResourceVersion},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.ServicePrincipal, ClientID: clientID,
			TenantID: sa.Annotations[WorkloadIdentityTenantIDAnnotation], Federation: &aadv1.Federation{}},
	}
}

// UpsertServiceAccount records the implicit identity of an annotated ServiceAccount (and forgets
// it when the annotation is gone).
func (s *Store) UpsertServiceAccount(sa *metav1.PartialObjectMetadata) {
	k := types.NamespacedName{Namespace: sa.Namespace, Name: sa.Name}
	id := implicitIdentity(sa)
	s.mu.Lock()
	if id == nil {
		delete(s.implicit, k)
	} else {
		s.implicit[k] = id
	}
	s.notifyLocked()
	s.mu.Unlock()
}

// DeleteServiceAccount forgets a ServiceAccount's implicit identity.
func (s *Store) DeleteServiceAccount(namespace, name string) {
	s.mu.Lock()
	delete(s.implicit, types.NamespacedName{Namespace: namespace, Name: name})
	s.notifyLocked()
	s.mu.Unlock()
}

// grants is grantsLocked under the store's read lock.
func (s *Store) grants(p *podInfo, opts bindingRules) ([]grant, []*aadv1.AzureIdentityBinding) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.grantsLocked(p, opts)
}

// grantsLocked is boundIdentitiesLocked plus, with honorWorkloadIdentity and no binding selecting the pod
// at all, the implicit identity of its ServiceAccount.
func (s *Store) grantsLocked(p *podInfo, opts bindingRules) ([]grant, []*aadv1.AzureIdentityBinding) {
	bound, ignored := s.boundIdentitiesLocked(p, opts.Options)
	if len(bound) > 0 || len(ignored) > 0 || !opts.honorWorkloadIdentity {
		return bound, ignored
	}
	sa := types.NamespacedName{Namespace: p.Namespace, Name: p.ServiceAccount}
	if id := s.implicit[sa]; id != nil {
		return []grant{{id: id, implicitSA: sa}}, nil
	}
	return nil, nil
}
