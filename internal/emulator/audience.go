package emulator

import "strings"

// armAudience reports whether ARM accepts a token audience: the public cloud's, the emulator's
// own ARM URL and the configured ones (e.g. an environment file's tokenAudience), as Azure Stack
// Hub accepts its endpoint-derived audience; with or without a trailing slash, any case.
func (e *Emulator) armAudience(aud string) bool {
	norm := func(s string) string { return strings.TrimSuffix(strings.ToLower(s), "/") }
	a := norm(aud)
	if a == "" {
		return false
	}
	for _, ok := range append([]string{"https://management.azure.com", "https://management.core.windows.net", e.armURL}, e.cfg.ARMAudiences...) {
		if a == norm(ok) {
			return true
		}
	}
	return false
}
