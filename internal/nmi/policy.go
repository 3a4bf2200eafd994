package nmi

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/nmi/imdsreq"
)

// ErrRefused: the identity is one this node refuses to serve as configured (a Secret in another
// namespace, an Azure AD host nobody allowed). Retrying does not help; the identity must change.
var ErrRefused = errors.New("identity refused by NMI's policy")

// authorities are the Azure AD hosts a service principal's credentials may be sent to, as
// normalized origins (https://host[:port], lower case).
type authorities struct {
	origins []string
}

// newAuthorities allows the configured cloud's authority and the operator's extra hosts.
func newAuthorities(cloud string, extra []string) (authorities, error) {
	var a authorities
	o, err := origin(cloud, true)
	if err != nil {
		return a, fmt.Errorf("the cloud's Azure AD authority %q: %w", cloud, err)
	}
	a.origins = append(a.origins, o)
	for _, e := range extra {
		o, err := origin(e, false)
		if err != nil {
			return a, fmt.Errorf("--allowed-ad-endpoints entry %q: %w", e, err)
		}
		if !slices.Contains(a.origins, o) {
			a.origins = append(a.origins, o)
		}
	}
	return a, nil
}

// origin normalizes an authority URL (or a bare host) to scheme://host[:port]. Only https is
// accepted, except for the configured cloud itself (trusted: it comes from NMI's own config).
func origin(s string, trusted bool) (string, error) {
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("not a URL: %v", err)
	}
	switch {
	case u.Host == "":
		return "", errors.New("names no host")
	case u.Scheme != "https" && !trusted:
		return "", errors.New("is not https")
	case u.User != nil || u.RawQuery != "" || u.Fragment != "":
		return "", errors.New("must be scheme://host[:port]/ without user, query or fragment")
	case u.Path != "" && u.Path != "/":
		return "", errors.New("must not have a path (Azure AD authorities are hosts)")
	}
	return strings.ToLower(u.Scheme + "://" + u.Host), nil
}

func (a authorities) allows(endpoint string) bool {
	o, err := origin(endpoint, false)
	return err == nil && slices.Contains(a.origins, o)
}

func (a authorities) String() string {
	out := make([]string, len(a.origins))
	for i, o := range a.origins {
		out[i] = o + "/"
	}
	return strings.Join(out, ", ")
}

// checkPolicy refuses identities whose credentials NMI must not use or send where asked: a
// Secret outside the identity's namespace (unless the operator allows it, and never for a
// namespaced identity) and an adEndpoint that is not an allowed Azure AD authority.
func (s *Server) checkPolicy(id *aadv1.AzureIdentity) error {
	if id.Spec.IsFederated() {
		if err := s.checkFederation(id); err != nil {
			return err
		}
	} else if id.Spec.Type == aadv1.UserAssignedMSI {
		return nil
	}
	if ns := id.Spec.ClientPassword.Namespace; ns != "" && ns != id.Namespace {
		namespaced := binding.Namespaced(id, s.cfg.ForceNamespaced || s.cfg.OperationMode == ModeManaged)
		if !s.cfg.AllowCrossNamespaceSecrets || namespaced {
			why := "this node does not allow Secrets in other namespaces (--allow-cross-namespace-secrets, chart value nmi.allowCrossNamespaceSecrets)"
			if namespaced {
				why = "a namespaced identity may only use Secrets of its own namespace"
			}
			return fmt.Errorf("%w: AzureIdentity %s/%s references Secret %s/%s in another namespace: %s; move the Secret to namespace %s and clear spec.clientPassword.namespace",
				ErrRefused, id.Namespace, id.Name, ns, id.Spec.ClientPassword.Name, why, id.Namespace)
		}
	}
	if ep := id.Spec.ADEndpoint; ep != "" && !s.authorities.allows(ep) {
		return fmt.Errorf("%w: AzureIdentity %s/%s has spec.adEndpoint %s, which is not an allowed Azure AD authority (allowed: %s): leave it empty or use one of those, or ask the cluster operator to add the host to --allowed-ad-endpoints (chart value nmi.allowedADEndpoints)",
			ErrRefused, id.Namespace, id.Name, imdsreq.Clip(ep), s.authorities)
	}
	return nil
}
