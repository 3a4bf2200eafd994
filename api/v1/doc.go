// Package v1 holds the aadpodidentity.k8s.io/v1 API: AzureIdentity, AzureIdentityBinding,
// AzureAssignedIdentity and AzurePodIdentityException. The JSON shapes are wire-compatible with
// aad-pod-identity v1.6+ so that existing manifests and stored objects keep working.
//
// +kubebuilder:object:generate=true
// +groupName=aadpodidentity.k8s.io
package v1
