#!/usr/bin/env bash
# Regenerates the JSON schemas the dashboard unit test validates against, from the TypeScript
# types Grafana publishes in npm @grafana/schema (the version the dashboards target: the SDK pin
# grafana-foundation-sdk==1769699379!11.6.0 is Grafana 11.6). Needs node + npm; CI does not run
# this: the generated schemas are committed. Usage: bash grafana/schema/generate.sh
set -euo pipefail
GRAFANA_SCHEMA_VERSION=11.6.0
GENERATOR_VERSION=2.4.0
out=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
npm init -y >/dev/null
npm install --no-audit --no-fund --silent "@grafana/schema@$GRAFANA_SCHEMA_VERSION" \
    "ts-json-schema-generator@$GENERATOR_VERSION" typescript@5
cat > tsconfig.json <<'JSON'
{"compilerOptions": {"moduleResolution": "node", "module": "commonjs", "target": "es2020",
                     "skipLibCheck": true, "strict": false}}
JSON
types=node_modules/@grafana/schema/dist/esm/raw
gen() {  # gen <types file> <root type> <output file>
    npx ts-json-schema-generator --path "$1" --type "$2" --additional-properties \
        --no-type-check --tsconfig tsconfig.json --out "$out/$3"
}
gen "$types/dashboard/x/dashboard_types.gen.d.ts" Dashboard dashboard.schema.json
mkdir -p "$out/panels"
# Panel types the dashboards use: plugin id (the panel's "type"), its directory and type name in
# @grafana/schema, and whether it defines a custom FieldConfig (stat and bargauge have none).
for spec in table:table:Table:yes stat:stat:Stat:no bargauge:bargauge:BarGauge:no \
            timeseries:timeseries:TimeSeries:yes state-timeline:statetimeline:StateTimeline:yes; do
    IFS=: read -r id dir name custom <<<"$spec"
    file="$types/composable/$dir/panelcfg/x/${name}PanelCfg_types.gen.d.ts"
    gen "$file" Options "panels/$id.options.schema.json"
    if [ "$custom" = yes ]; then
        gen "$file" FieldConfig "panels/$id.fieldconfig.schema.json"
    fi
done
echo "$GRAFANA_SCHEMA_VERSION" > "$out/VERSION"
