// Runs the ibu CLI straight from the TypeScript sources (`npx tsx bench/lib/ibu-dev.ts ...`), so
// benchmark scripts work in a checkout without a build step.
import { main } from '../../src/cli/ibu.js';

await main(process.argv.slice(2));
