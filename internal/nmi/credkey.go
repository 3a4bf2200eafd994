package nmi

import (
	"strings"

	"k8s.io/apimachinery/pkg/types"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// credKind says which source a credKey's tokens come from.
type credKind uint8

const (
	credIMDS      credKind = iota + 1 // type 0 from the node's IMDS
	credSecret                        // type 1 with a client secret
	credCert                          // type 2 with a certificate
	credFederated                     // workload identity federation (type 0 or 1)
)

// credKey identifies the credentials a token is issued for: every field that selects them is in
// it, so an edited identity or a rotated Secret is a new key. Comparable, so it is a map key.
type credKey struct {
	kind credKind
	// identity is the AzureIdentity for Secret-based principals (its Secret is its own).
	identity             types.NamespacedName
	clientID, resourceID string // lower case
	tenantID, auxTenants string
	authority            string
	// secret and secretVersion (uid@resourceVersion) are the Secret a principal reads.
	secret        types.NamespacedName
	secretVersion string
	// subject is the ServiceAccount (namespace/name) Azure AD authorized for a federated token:
	// Azure AD decided for that ServiceAccount, not for the identity in general. audience is
	// the audience of the ServiceAccount token presented.
	subject  types.NamespacedName
	audience string
}

// cacheKey is one cache entry: credentials and the resource the token is for.
type cacheKey struct {
	cred     credKey
	resource string
}

// staticCredKey identifies an identity's credentials without I/O: for type 0 it is the whole
// key; a service principal's adds its Secret's version and a federated one its subject
// (credentials). Object IDs learned from tokens and resources asked for are kept by it.
func (s *Server) staticCredKey(id *aadv1.AzureIdentity) credKey {
	if id.Spec.IsFederated() {
		return credKey{kind: credFederated, clientID: strings.ToLower(id.Spec.ClientID),
			resourceID: strings.ToLower(id.Spec.ResourceID), tenantID: id.Spec.TenantID,
			authority: s.federationAuthority(id), audience: id.Spec.Federation.AudienceOrDefault()}
	}
	if id.Spec.Type == aadv1.UserAssignedMSI {
		// Both IDs: IMDS is asked by resource ID and the token checked against the client ID.
		return credKey{kind: credIMDS, resourceID: strings.ToLower(id.Spec.ResourceID), clientID: strings.ToLower(id.Spec.ClientID)}
	}
	kind := credSecret
	if id.Spec.Type == aadv1.ServicePrincipalCertificate {
		kind = credCert
	}
	sec := id.Spec.ClientPassword
	return credKey{kind: kind, identity: types.NamespacedName{Namespace: id.Namespace, Name: id.Name},
		clientID: strings.ToLower(id.Spec.ClientID), tenantID: id.Spec.TenantID,
		auxTenants: strings.Join(id.Spec.AuxiliaryTenantIDs, ","), authority: s.sp.authority(id),
		secret: types.NamespacedName{Namespace: sec.Namespace, Name: sec.Name}}
}
