// Runs `ibu` in a child process for tests that must kill a real server (kill -9). node --test
// also runs every .js under test/ as a test file; without arguments this file does nothing.
import { main } from '../../src/cli/ibu.js';

if (process.argv.length > 2) await main(process.argv.slice(2));
