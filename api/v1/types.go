package v1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// IdentityType says what kind of Azure AD principal an AzureIdentity is. It is stored as an
// integer, as in aad-pod-identity.
// +kubebuilder:validation:Enum=0;1;2
type IdentityType int

const (
	// UserAssignedMSI is a user-assigned managed identity. MIC puts it on the node's VM or VM
	// scale set and NMI gets its tokens from IMDS.
	UserAssignedMSI IdentityType = 0
	// ServicePrincipal is an Azure AD application whose client secret is in a Secret.
	ServicePrincipal IdentityType = 1
	// ServicePrincipalCertificate is an Azure AD application whose PKCS#12 certificate and its
	// password are in a Secret (keys "certificate" and "password").
	ServicePrincipalCertificate IdentityType = 2
)

// String names the type the way the documentation does.
func (t IdentityType) String() string {
	switch t {
	case UserAssignedMSI:
		return "UserAssignedMSI"
	case ServicePrincipal:
		return "ServicePrincipal"
	case ServicePrincipalCertificate:
		return "ServicePrincipalCertificate"
	}
	return "Unknown"
}

// AzureIdentitySpec describes one Azure AD identity that pods may use.
//
// The rules below turn mistakes that aad-pod-identity accepted silently (and failed on later, at
// token time) into errors at apply time. Messages name the field and the expected form.
//
// +kubebuilder:validation:XValidation:rule="has(self.clientID) && self.clientID.matches('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$')",message="spec.clientID is required and must be the identity's client (application) ID, a GUID such as 00000000-0000-0000-0000-000000000000",fieldPath=".clientID",reason="FieldValueInvalid"
// +kubebuilder:validation:XValidation:rule="self.type != 0 || (has(self.resourceID) && self.resourceID.matches('(?i)^/subscriptions/[^/]+/resourcegroups/[^/]+/providers/microsoft[.]managedidentity/userassignedidentities/[^/]+$'))",message="spec.resourceID is required for a user-assigned managed identity (type 0) and must have the form /subscriptions/<subscription-id>/resourcegroups/<resource-group>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<identity-name>",fieldPath=".resourceID",reason="FieldValueInvalid"
// +kubebuilder:validation:XValidation:rule="self.type == 0 || (has(self.tenantID) && size(self.tenantID) > 0)",message="spec.tenantID is required for a service principal (type 1 or 2): set it to the Azure AD tenant ID of the application",fieldPath=".tenantID",reason="FieldValueRequired"
// +kubebuilder:validation:XValidation:rule="!has(self.federation) || (has(self.tenantID) && size(self.tenantID) > 0)",message="spec.tenantID is required for a federated identity (spec.federation): set it to the Azure AD tenant ID that holds the identity",fieldPath=".tenantID",reason="FieldValueRequired"
// +kubebuilder:validation:XValidation:rule="!has(self.federation) || self.type != 2",message="spec.federation is not supported for a service principal with a certificate (type 2): use type 0 (user-assigned identity) or type 1 (app registration) with a federated credential",fieldPath=".federation",reason="FieldValueForbidden"
// +kubebuilder:validation:XValidation:rule="!has(self.federation) || !has(self.clientPassword) || !has(self.clientPassword.name) || size(self.clientPassword.name) == 0",message="spec.clientPassword and spec.federation exclude each other: a federated identity authenticates with the pod's ServiceAccount token, not a secret; remove spec.clientPassword (or spec.federation)",fieldPath=".clientPassword",reason="FieldValueForbidden"
// +kubebuilder:validation:XValidation:rule="!has(self.federation) || !has(self.auxiliaryTenantIDs) || size(self.auxiliaryTenantIDs) == 0",message="spec.auxiliaryTenantIDs is not supported with spec.federation: remove it",fieldPath=".auxiliaryTenantIDs",reason="FieldValueForbidden"
// +kubebuilder:validation:XValidation:rule="self.type == 0 || has(self.federation) || (has(self.clientPassword) && has(self.clientPassword.name) && size(self.clientPassword.name) > 0)",message="spec.clientPassword.name is required for a service principal (type 1 or 2): name the Secret that holds the client secret (type 1) or the certificate and its password (type 2)",fieldPath=".clientPassword",reason="FieldValueRequired"
// +kubebuilder:validation:XValidation:rule="self.type == 1 || !has(self.auxiliaryTenantIDs) || size(self.auxiliaryTenantIDs) == 0",message="spec.auxiliaryTenantIDs is only supported for a service principal with a client secret (type 1): remove it or change spec.type",fieldPath=".auxiliaryTenantIDs",reason="FieldValueForbidden"
type AzureIdentitySpec struct {
	// Type is 0 for a user-assigned managed identity, 1 for a service principal with a client
	// secret, 2 for a service principal with a certificate.
	// +kubebuilder:default=0
	// +optional
	Type IdentityType `json:"type"`

	// ResourceID is the ARM resource ID of the user-assigned managed identity (type 0).
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	ResourceID string `json:"resourceID,omitempty"`

	// ClientID is the client (application) ID of the identity.
	// +optional
	ClientID string `json:"clientID,omitempty"`

	// ClientPassword references the Secret with the service principal's credentials (types 1
	// and 2). Without a namespace, the Secret is looked up in the identity's namespace.
	// +optional
	ClientPassword corev1.SecretReference `json:"clientPassword,omitempty"`

	// TenantID is the Azure AD tenant of the service principal (types 1 and 2).
	// +optional
	TenantID string `json:"tenantID,omitempty"`

	// AuxiliaryTenantIDs lists further tenants for a multi-tenant service principal (type 1).
	// Tokens are then returned as a JSON array, primary tenant first.
	// +nullable
	// +optional
	AuxiliaryTenantIDs []string `json:"auxiliaryTenantIDs,omitempty"`

	// ADEndpoint is the Azure AD authority host for a service principal, e.g.
	// https://login.microsoftonline.com/ (the default).
	// +optional
	ADEndpoint string `json:"adEndpoint,omitempty"`

	// ADResourceID is accepted for compatibility and unused.
	// +optional
	ADResourceID string `json:"adResourceID,omitempty"`

	// Replicas is accepted for compatibility and unused.
	// +nullable
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`

	// Federation, when set, makes this a federated identity: NMI gets its tokens by exchanging
	// a ServiceAccount token with Azure AD (workload identity federation) instead of from the
	// node's IMDS or a secret, and MIC never assigns it to a VM or scale set. The identity needs
	// a federated identity credential for the cluster's OIDC issuer; see docs/federation.md.
	// +optional
	Federation *Federation `json:"federation,omitempty"`
}

// FederationSubject says whose ServiceAccount token NMI presents to Azure AD.
// +kubebuilder:validation:Enum=ServiceAccount;Broker
type FederationSubject string

const (
	// FederationSubjectServiceAccount presents a token of the calling pod's own ServiceAccount,
	// bound to the pod: the federated credential's subject is
	// system:serviceaccount:<pod namespace>:<pod serviceaccount>. Azure AD decides too.
	FederationSubjectServiceAccount FederationSubject = "ServiceAccount"
	// FederationSubjectBroker presents a token of NMI's own ServiceAccount: one federated
	// credential per identity and cluster, and podidentity's bindings alone decide which pods
	// may use it. Weaker: whoever controls NMI can get every broker identity.
	FederationSubjectBroker FederationSubject = "Broker"
)

// Default values of Federation's fields.
const (
	DefaultFederationAudience               = "api://AzureADTokenExchange"
	DefaultFederationTokenExpirationSeconds = 3600
)

// Federation configures how NMI gets an identity's tokens by workload identity federation.
type Federation struct {
	// Audience of the ServiceAccount token NMI presents; it must equal the audience of the
	// identity's federated credential.
	// +kubebuilder:default="api://AzureADTokenExchange"
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=600
	// +optional
	Audience string `json:"audience,omitempty"`

	// TokenExpirationSeconds is the lifetime NMI asks for its ServiceAccount tokens (600 to
	// 86400; default 3600). Azure AD cannot see a pod's deletion, so keep it short.
	// +kubebuilder:validation:Minimum=600
	// +kubebuilder:validation:Maximum=86400
	// +optional
	TokenExpirationSeconds *int64 `json:"tokenExpirationSeconds,omitempty"`

	// AuthorityHost is the Azure AD authority to exchange the token with, e.g.
	// https://login.microsoftonline.com/. Default: spec.adEndpoint, else the cloud's.
	// +kubebuilder:validation:MaxLength=512
	// +optional
	AuthorityHost string `json:"authorityHost,omitempty"`

	// Subject is whose ServiceAccount token NMI presents: ServiceAccount (default: the calling
	// pod's own) or Broker (NMI's own; see FederationSubjectBroker).
	// +kubebuilder:default=ServiceAccount
	// +optional
	Subject FederationSubject `json:"subject,omitempty"`
}

// AudienceOrDefault is the token audience, DefaultFederationAudience when unset.
func (f *Federation) AudienceOrDefault() string {
	if f == nil || f.Audience == "" {
		return DefaultFederationAudience
	}
	return f.Audience
}

// ExpirationSecondsOrDefault is the token lifetime, DefaultFederationTokenExpirationSeconds
// when unset.
func (f *Federation) ExpirationSecondsOrDefault() int64 {
	if f == nil || f.TokenExpirationSeconds == nil {
		return DefaultFederationTokenExpirationSeconds
	}
	return *f.TokenExpirationSeconds
}

// IsBroker says whether NMI presents its own ServiceAccount's token.
func (f *Federation) IsBroker() bool { return f != nil && f.Subject == FederationSubjectBroker }

// IsFederated says whether the identity's tokens come from workload identity federation.
func (s *AzureIdentitySpec) IsFederated() bool { return s.Federation != nil }

// AzureIdentityStatus is accepted for compatibility and unused.
type AzureIdentityStatus struct {
	// +optional
	AvailableReplicas int32 `json:"availableReplicas,omitempty"`
}

// AzureIdentity is an Azure AD identity (user-assigned managed identity or service principal)
// that pods can be bound to with an AzureIdentityBinding.
//
// +kubebuilder:object:root=true
// +kubebuilder:metadata:annotations="api-approved.kubernetes.io=unapproved"
// +kubebuilder:printcolumn:name="Type",type=integer,JSONPath=`.spec.type`
// +kubebuilder:printcolumn:name="ClientID",type=string,JSONPath=`.spec.clientID`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AzureIdentity struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec AzureIdentitySpec `json:"spec,omitempty"`
	// +optional
	Status AzureIdentityStatus `json:"status,omitempty"`
}

// IsNamespaced reports whether the identity asks for namespaced matching through its annotation.
func (a *AzureIdentity) IsNamespaced() bool {
	return a.Annotations[BehaviorKey] == BehaviorNamespaced
}

// AzureIdentityList is a list of AzureIdentity.
// +kubebuilder:object:root=true
type AzureIdentityList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AzureIdentity `json:"items"`
}

// AzureIdentityBindingSpec binds pods whose aadpodidbinding label equals Selector, and/or that
// run as ServiceAccountName in the binding's namespace, to the AzureIdentity named AzureIdentity
// in the binding's namespace.
//
// +kubebuilder:validation:XValidation:rule="has(self.azureIdentity) && self.azureIdentity.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$') && size(self.azureIdentity) <= 253",message="spec.azureIdentity is required and must be the name of an AzureIdentity in the binding's namespace (lowercase letters, digits, '-' and '.')",fieldPath=".azureIdentity",reason="FieldValueInvalid"
// +kubebuilder:validation:XValidation:rule="(has(self.selector) && size(self.selector) > 0) || (has(self.serviceAccountName) && size(self.serviceAccountName) > 0)",message="spec.selector is required unless spec.serviceAccountName is set: set spec.serviceAccountName to bind the pods of this namespace that run as that ServiceAccount (recommended), and/or spec.selector to bind pods labelled aadpodidbinding=<selector>",fieldPath=".selector",reason="FieldValueRequired"
// +kubebuilder:validation:XValidation:rule="!has(self.selector) || size(self.selector) == 0 || (self.selector.matches('^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$') && size(self.selector) <= 63)",message="spec.selector must be a valid label value (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit): pods select this binding with the label aadpodidbinding=<selector>",fieldPath=".selector",reason="FieldValueInvalid"
// +kubebuilder:validation:XValidation:rule="!has(self.serviceAccountName) || size(self.serviceAccountName) == 0 || (self.serviceAccountName.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$') && size(self.serviceAccountName) <= 253)",message="spec.serviceAccountName must be the name of a ServiceAccount in the binding's namespace (lowercase letters, digits, '-' and '.')",fieldPath=".serviceAccountName",reason="FieldValueInvalid"
type AzureIdentityBindingSpec struct {
	// AzureIdentity is the name of the AzureIdentity, in the binding's namespace.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	AzureIdentity string `json:"azureIdentity,omitempty"`

	// Selector is compared, as a plain string, with the value of the pod label aadpodidbinding.
	// Optional when ServiceAccountName is set; then both must match.
	// +kubebuilder:validation:MaxLength=63
	// +optional
	Selector string `json:"selector,omitempty"`

	// ServiceAccountName, when set, restricts the binding to pods in the binding's own namespace
	// whose spec.serviceAccountName is this name ("default" when a pod names none), whatever the
	// namespaced setting. Who may run pods as a ServiceAccount is decided by RBAC, unlike a label,
	// which every pod author can copy.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	ServiceAccountName string `json:"serviceAccountName,omitempty"`

	// Weight orders the identities of a pod that several bindings match: a token request that
	// names no identity gets the one whose binding has the highest weight (ties: by the
	// identity's namespace, then name).
	// +optional
	Weight int `json:"weight,omitempty"`
}

// AzureIdentityBindingStatus is accepted for compatibility and unused.
type AzureIdentityBindingStatus struct {
	// +optional
	AvailableReplicas int32 `json:"availableReplicas,omitempty"`
}

// AzureIdentityBinding binds pods, by their aadpodidbinding label and/or their ServiceAccount, to
// an AzureIdentity.
//
// +kubebuilder:object:root=true
// +kubebuilder:metadata:annotations="api-approved.kubernetes.io=unapproved"
// +kubebuilder:printcolumn:name="AzureIdentity",type=string,JSONPath=`.spec.azureIdentity`
// +kubebuilder:printcolumn:name="Selector",type=string,JSONPath=`.spec.selector`
// +kubebuilder:printcolumn:name="ServiceAccount",type=string,JSONPath=`.spec.serviceAccountName`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AzureIdentityBinding struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec AzureIdentityBindingSpec `json:"spec,omitempty"`
	// +optional
	Status AzureIdentityBindingStatus `json:"status,omitempty"`
}

// AzureIdentityBindingList is a list of AzureIdentityBinding.
// +kubebuilder:object:root=true
type AzureIdentityBindingList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AzureIdentityBinding `json:"items"`
}

// AzureAssignedIdentitySpec records one (pod, identity) pair that MIC assigned.
type AzureAssignedIdentitySpec struct {
	// AzureIdentityRef is a copy of the AzureIdentity at the time of assignment.
	// +kubebuilder:validation:EmbeddedResource
	// +optional
	AzureIdentityRef *AzureIdentity `json:"azureIdentityRef,omitempty"`
	// AzureBindingRef is a copy of the AzureIdentityBinding that matched the pod.
	// +kubebuilder:validation:EmbeddedResource
	// +optional
	AzureBindingRef *AzureIdentityBinding `json:"azureBindingRef,omitempty"`
	// Pod is the pod's name.
	Pod string `json:"pod"`
	// PodNamespace is the pod's namespace.
	PodNamespace string `json:"podNamespace"`
	// NodeName is the node the pod runs on.
	NodeName string `json:"nodename"`
	// Replicas is accepted for compatibility and unused.
	// +nullable
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`
}

// AzureAssignedIdentityStatus is the assignment's life-cycle state.
type AzureAssignedIdentityStatus struct {
	// Status is Created, Assigned or Unassigned (empty on objects from aad-pod-identity < 1.5,
	// treated as Assigned).
	// +optional
	Status AssignedIdentityState `json:"status,omitempty"`
	// AvailableReplicas is always 1, as upstream.
	// +optional
	AvailableReplicas int32 `json:"availableReplicas,omitempty"`
}

// AzureAssignedIdentity is written by MIC only: one per (pod, identity) assignment.
//
// There is deliberately no status subresource, as in aad-pod-identity: status travels with the
// object on every write. Compatibility consequence: tools and older controllers that update status
// through the main resource keep working during a migration; the cost is that a spec writer can
// overwrite status, which is fine because MIC is the only writer.
//
// +kubebuilder:object:root=true
// +kubebuilder:metadata:annotations="api-approved.kubernetes.io=unapproved"
// +kubebuilder:printcolumn:name="Pod",type=string,JSONPath=`.spec.pod`
// +kubebuilder:printcolumn:name="PodNamespace",type=string,JSONPath=`.spec.podNamespace`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.nodename`
// +kubebuilder:printcolumn:name="Identity",type=string,JSONPath=`.spec.azureIdentityRef.metadata.name`
// +kubebuilder:printcolumn:name="Status",type=string,JSONPath=`.status.status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AzureAssignedIdentity struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec AzureAssignedIdentitySpec `json:"spec,omitempty"`
	// +optional
	Status AzureAssignedIdentityStatus `json:"status,omitempty"`
}

// AzureAssignedIdentityList is a list of AzureAssignedIdentity.
// +kubebuilder:object:root=true
type AzureAssignedIdentityList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AzureAssignedIdentity `json:"items"`
}

// AzurePodIdentityExceptionSpec excepts pods from identity checks: a pod is excepted when any one
// of PodLabels is on the pod with an equal value (values compared case-insensitively).
type AzurePodIdentityExceptionSpec struct {
	// +optional
	PodLabels map[string]string `json:"podLabels,omitempty"`
}

// AzurePodIdentityExceptionStatus is accepted for compatibility and unused.
type AzurePodIdentityExceptionStatus struct {
	// +optional
	Status string `json:"status,omitempty"`
}

// AzurePodIdentityException lets matching pods in its namespace reach IMDS directly through NMI,
// without identity checks (for example, pods that use the node's own identity).
//
// +kubebuilder:object:root=true
// +kubebuilder:metadata:annotations="api-approved.kubernetes.io=unapproved"
type AzurePodIdentityException struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec AzurePodIdentityExceptionSpec `json:"spec,omitempty"`
	// +optional
	Status AzurePodIdentityExceptionStatus `json:"status,omitempty"`
}

// AzurePodIdentityExceptionList is a list of AzurePodIdentityException.
// +kubebuilder:object:root=true
type AzurePodIdentityExceptionList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AzurePodIdentityException `json:"items"`
}
