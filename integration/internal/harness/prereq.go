package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ChromiumPath is the browser flow.mjs drives: $CHROMIUM_BIN or
// /usr/bin/chromium (Debian's chromium package).
func ChromiumPath() string {
	if p := os.Getenv("CHROMIUM_BIN"); p != "" {
		return p
	}
	return "/usr/bin/chromium"
}

// CheckBrowserPrereqs reports every missing piece of the browser flows
// (node, Chromium, integration/js/node_modules) with the command that
// installs it.
func CheckBrowserPrereqs() error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	var missing []string
	if _, err := exec.LookPath("node"); err != nil {
		missing = append(missing, "node (Node.js 20+) is not on PATH: install it, e.g. `apt-get install nodejs npm`")
	}
	if st, err := os.Stat(ChromiumPath()); err != nil || st.IsDir() {
		missing = append(missing, fmt.Sprintf("Chromium is missing at %s: run `bash integration/scripts/ensure-chromium.sh` (as root; apt-get installs Debian's chromium)", ChromiumPath()))
	}
	for _, pkg := range []string{"openid-client", "playwright-core"} {
		if _, err := os.Stat(filepath.Join(root, "integration", "js", "node_modules", pkg, "package.json")); err != nil {
			missing = append(missing, fmt.Sprintf("integration/js/node_modules/%s is missing: run `(cd integration/js && npm ci)`", pkg))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the browser flows cannot run:\n  - %s", strings.Join(missing, "\n  - "))
	}
	return nil
}
