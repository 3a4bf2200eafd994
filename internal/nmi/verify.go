package nmi

import (
	"errors"
	"fmt"
	"strings"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// ErrIdentityMismatch: IMDS answered with a token of another identity than the AzureIdentity
// describes (its clientID and resourceID belong to different identities). Never served.
var ErrIdentityMismatch = errors.New("token is not for the identity")

// MismatchError says which of the identity's fields the token contradicts.
type MismatchError struct {
	From               string // who issued the token: IMDS or Azure AD
	Identity           string // namespace/name
	Field              string // spec.resourceID or spec.clientID
	Want, Got, TokenOf string
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("the token %s issued for AzureIdentity %s has %s %q, but the identity's %s is %q: its spec.clientID and spec.resourceID must name the same user-assigned identity (az identity show --ids <resourceID> --query clientId); no token is served",
		e.From, e.Identity, e.TokenOf, clipBytes([]byte(e.Got)), e.Field, e.Want)
}

func (e *MismatchError) Unwrap() error { return ErrIdentityMismatch }

// verifyManagedIdentity checks that a token from IMDS (or, federated, Azure AD) is for the
// identity's resource ID (xms_mirid) and client ID (the answer's client_id and the token's
// appid/azp).
func verifyManagedIdentity(tok Token, id *aadv1.AzureIdentity, from string) error {
	key := id.Namespace + "/" + id.Name
	c := claimsOf(tok.AccessToken)
	if !c.parsedOK {
		return &MismatchError{From: from, Identity: key, Field: "spec.resourceID", Want: id.Spec.ResourceID, TokenOf: "claims", Got: "(not a JWT)"}
	}
	if !strings.EqualFold(c.MIResID, id.Spec.ResourceID) {
		return &MismatchError{From: from, Identity: key, Field: "spec.resourceID", Want: id.Spec.ResourceID, TokenOf: "xms_mirid", Got: c.MIResID}
	}
	if got := c.clientID(); !strings.EqualFold(got, id.Spec.ClientID) {
		return &MismatchError{From: from, Identity: key, Field: "spec.clientID", Want: id.Spec.ClientID, TokenOf: "appid", Got: got}
	}
	if tok.ClientID != "" && !strings.EqualFold(tok.ClientID, id.Spec.ClientID) {
		return &MismatchError{From: from, Identity: key, Field: "spec.clientID", Want: id.Spec.ClientID, TokenOf: "client_id", Got: tok.ClientID}
	}
	return nil
}
