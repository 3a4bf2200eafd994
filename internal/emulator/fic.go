package emulator

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Limits of federated identity credentials, as Azure documents them.
const (
	MaxFederatedCredentials = 20  // per user-assigned identity or app registration
	MaxFICFieldLength       = 600 // issuer, subject, audience, description
	// TokenExchangeAudience is the audience Azure AD expects in external tokens.
	TokenExchangeAudience = "api://AzureADTokenExchange"
	ficType               = "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials"
)

// FICConflictCode is the ARM error code of a federated credential write that overlaps another
// write on the same identity (HTTP 409).
const FICConflictCode = "ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity"

var ficName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{2,119}$`)

// fic is one federated identity credential.
type fic struct {
	Name, Issuer, Subject, Audience, Description string
	Created, Modified                            time.Time
}

// ficSet is the federated credentials of one identity or application, in creation order.
type ficSet struct {
	list      []*fic
	busyUntil time.Time // a write is in progress until then (409 for overlapping writes)
}

func (s *ficSet) find(name string) (int, *fic) {
	for i, f := range s.list {
		if strings.EqualFold(f.Name, name) {
			return i, f
		}
	}
	return -1, nil
}

// put validates and stores a credential (create or update); created reports which. Errors are
// ARM errors with the real API's messages.
func (s *ficSet) put(in FederatedCredentialConfig, now time.Time) (created bool, _ *ARMError) {
	bad := func(msg string) *ARMError { return &ARMError{Status: 400, Code: "BadRequest", Message: msg} }
	if !ficName.MatchString(in.Name) {
		return false, bad(fmt.Sprintf("Federated Identity Credential name '%s' is invalid. Use 3 to 120 characters: letters, digits, '-' and '_', starting with a letter or digit.", in.Name))
	}
	if in.Issuer == "" && in.Subject == "" && len(in.Audiences) == 0 {
		return false, bad("Federated Identity Credential from HTTP body has empty properties.")
	}
	if len(in.Audiences) != 1 {
		return false, bad(fmt.Sprintf("Federated identity credentials must have exactly one audience (got %d); use [\"%s\"].", len(in.Audiences), TokenExchangeAudience))
	}
	for field, v := range map[string]string{"issuer": in.Issuer, "subject": in.Subject, "audience": in.Audiences[0]} {
		if v == "" {
			return false, bad(fmt.Sprintf("Federated identity credential %s is required: set properties.%s.", field, field))
		}
		if len(v) > MaxFICFieldLength {
			return false, bad(fmt.Sprintf("Federated identity credential %s is %d characters long: at most %d are allowed.", field, len(v), MaxFICFieldLength))
		}
	}
	if len(in.Description) > MaxFICFieldLength {
		return false, bad(fmt.Sprintf("Federated identity credential description is %d characters long: at most %d are allowed.", len(in.Description), MaxFICFieldLength))
	}
	i, cur := s.find(in.Name)
	for _, f := range s.list {
		if f != cur && f.Issuer == in.Issuer && f.Subject == in.Subject {
			return false, bad(fmt.Sprintf("Issuer and subject combination already exists for this Managed Identity (federated identity credential '%s').", f.Name))
		}
	}
	if cur == nil && len(s.list) >= MaxFederatedCredentials {
		return false, bad(fmt.Sprintf("The maximum number of federated identity credentials (%d) has been reached for this identity: delete one or use another identity.", MaxFederatedCredentials))
	}
	f := &fic{Name: in.Name, Issuer: in.Issuer, Subject: in.Subject, Audience: in.Audiences[0], Description: in.Description, Created: now, Modified: now}
	if cur != nil {
		f.Name, f.Created = cur.Name, cur.Created // names are immutable; an update keeps its age
		if cur.Issuer != f.Issuer || cur.Subject != f.Subject || cur.Audience != f.Audience {
			f.Created = now // a changed match propagates again
		}
		s.list[i] = f
		return false, nil
	}
	s.list = append(s.list, f)
	return true, nil
}

func (s *ficSet) remove(name string) bool {
	i, f := s.find(name)
	if f == nil {
		return false
	}
	s.list = append(s.list[:i:i], s.list[i+1:]...)
	return true
}

// preload adds the world file's credentials; they exist from the start (no propagation delay).
func (s *ficSet) preload(in []FederatedCredentialConfig, owner string) error {
	for _, c := range in {
		if len(c.Audiences) == 0 {
			c.Audiences = []string{TokenExchangeAudience}
		}
		if _, ae := s.put(c, time.Time{}); ae != nil {
			return &ConfigError{fmt.Sprintf("%s: federated credential %q: %s", owner, c.Name, ae.Message)}
		}
	}
	return nil
}

// FederatedCredential is a federated identity credential as the Go and admin APIs show it.
type FederatedCredential struct {
	// Owner is the identity's resource ID or the application's client ID.
	Owner       string    `json:"owner"`
	Name        string    `json:"name"`
	Issuer      string    `json:"issuer"`
	Subject     string    `json:"subject"`
	Audiences   []string  `json:"audiences"`
	Description string    `json:"description,omitempty"`
	Created     time.Time `json:"created"`
}

// ficOwnerLocked finds the credential set of an identity (name or resource ID) or of an
// application (client ID; an identity's client ID works too).
func (e *Emulator) ficOwnerLocked(owner string) (*ficSet, string, error) {
	if i := e.identities[e.identityKey(owner)]; i != nil {
		return &i.FICs, i.ID, nil
	}
	if p := e.principals[strings.ToLower(owner)]; p != nil {
		return &p.FICs, p.AppID, nil
	}
	for _, i := range e.identities {
		if strings.EqualFold(i.ClientID, owner) {
			return &i.FICs, i.ID, nil
		}
	}
	return nil, "", &NotFoundError{"identity or application", owner}
}

// AddFederatedCredential creates or updates a federated credential on an identity (name or ID)
// or an application (client ID) out of band; the propagation delay applies from now.
func (e *Emulator) AddFederatedCredential(owner string, c FederatedCredentialConfig) error {
	if len(c.Audiences) == 0 {
		c.Audiences = []string{TokenExchangeAudience}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	s, _, err := e.ficOwnerLocked(owner)
	if err != nil {
		return err
	}
	if _, ae := s.put(c, time.Now()); ae != nil {
		return &ConfigError{fmt.Sprintf("federated credential %q on %s: %s", c.Name, owner, ae.Message)}
	}
	return nil
}

// RemoveFederatedCredential deletes a federated credential out of band.
func (e *Emulator) RemoveFederatedCredential(owner, name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	s, _, err := e.ficOwnerLocked(owner)
	if err != nil {
		return err
	}
	if !s.remove(name) {
		return &NotFoundError{"federated credential", name}
	}
	return nil
}

// FederatedCredentials lists an identity's or application's federated credentials.
func (e *Emulator) FederatedCredentials(owner string) ([]FederatedCredential, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	s, id, err := e.ficOwnerLocked(owner)
	if err != nil {
		return nil, err
	}
	out := make([]FederatedCredential, 0, len(s.list))
	for _, f := range s.list {
		out = append(out, FederatedCredential{Owner: id, Name: f.Name, Issuer: f.Issuer, Subject: f.Subject,
			Audiences: []string{f.Audience}, Description: f.Description, Created: f.Created})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
